"""Launch the qcnn desktop app: `python main.py [IMAGE] [--screenshot FILE]`."""
from app.window import main

if __name__ == "__main__":
    raise SystemExit(main())
