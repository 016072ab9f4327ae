"""Launch the qcnn desktop app: `python main.py [IMAGE] [--screenshot FILE]`."""
from app.window import main

raise SystemExit(main())
