from homie.cli import main

main()
