import sys

from agentbox.cli.main import app

sys.exit(app())
