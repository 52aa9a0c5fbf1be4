from nftdocker.cli.main import main

raise SystemExit(main())
