from promptkit.entry import main

main()
