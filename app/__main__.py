from app.window import main

raise SystemExit(main())
