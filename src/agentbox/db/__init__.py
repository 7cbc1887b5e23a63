"""The database: the ORM rows (models), every query (store), and the schema's history (migrations)."""
