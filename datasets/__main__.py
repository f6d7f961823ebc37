from datasets.cli import main

raise SystemExit(main())
