"""Write the kill-the-bits ResNet file itself as a .qcnn model: the authors' compressed 1x1
convolutions run as product-quantized layers (their codebooks and codes, no k-means of ours),
the rest dense.  Then `qcnn eval --model OUT.qcnn` and `qcnn bench --model OUT.qcnn` compare
it with the dense network rebuilt from the same codes.

    .venv/bin/python scripts/authors-pq.py resnet50 -o resnet50-authors.qcnn
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qcnn.models.resnet import ARCHS, authors_pq_model  # noqa: E402
from qcnn.pq.layer import PQLayer  # noqa: E402
from qcnn.pq.modelfile import save_model  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", choices=sorted(ARCHS))
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--float16-codebooks", action="store_true", help="store the codebooks as float16 (as the authors do)")
    args = p.parse_args(argv)
    model, graph = authors_pq_model(args.model)
    pq = [n.name for n in graph if isinstance(n.layer, PQLayer)]
    size = save_model(args.output, model, graph, {"source": "kill-the-bits codebooks and codes (Stock et al. 2020)",
                                                  "authors_pq_layers": pq},
                      float16_codebooks=args.float16_codebooks)
    print(f"{args.output}: {size} bytes, {len(pq)} layers as lookups: {', '.join(pq)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
