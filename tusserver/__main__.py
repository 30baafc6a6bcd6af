from tusserver.cli import main

main()
