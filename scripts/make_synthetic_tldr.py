"""Regenerate the shipped synthetic TL;DR-like data: ``python scripts/make_synthetic_tldr.py``.

Writes ``treemdp/data/tldr_sft.jsonl`` (prompt/completion), ``tldr_prefs.jsonl`` and
``tldr_prefs_test.jsonl`` (prompt/chosen/rejected); see ``treemdp.llm.synthetic``.
"""

import argparse

from treemdp.llm.synthetic import shipped_data_dir, write_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(shipped_data_dir()), help="output folder")
    parser.add_argument("--n-train", type=int, default=300, help="rows per training file")
    parser.add_argument("--n-test", type=int, default=64, help="rows in the test file")
    parser.add_argument("--seed", type=int, default=0, help="generator seed")
    args = parser.parse_args()
    for path in write_dataset(args.out, args.n_train, args.n_test, args.seed):
        print(path)


if __name__ == "__main__":
    main()
