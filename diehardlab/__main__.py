from diehardlab.cli import main

raise SystemExit(main())
