from babeltune.cli import main

main()
