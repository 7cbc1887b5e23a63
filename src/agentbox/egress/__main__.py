from agentbox.egress.child import main

main()
