from gbmedia.cli import main

raise SystemExit(main())
