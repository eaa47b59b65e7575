from hermes.entry import hermes_main

hermes_main()
