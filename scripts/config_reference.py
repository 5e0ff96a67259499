"""Print the configuration reference (every stage config's options, defaults and help) as Markdown,
or rewrite the README's generated section with it:

    .venv/bin/python scripts/config_reference.py            # print
    .venv/bin/python scripts/config_reference.py --write    # update README.md between the markers
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines.nightly import REFERENCE_END, REFERENCE_START, config_reference  # noqa: E402


def main(argv: list[str]) -> int:
    text = config_reference()
    if "--write" not in argv:
        print(text)
        return 0
    readme = ROOT / "README.md"
    old = readme.read_text()
    if REFERENCE_START not in old or REFERENCE_END not in old:
        print(f"error: {readme} has no generated section markers", file=sys.stderr)
        return 2
    head, rest = old.split(REFERENCE_START, 1)
    _, tail = rest.split(REFERENCE_END, 1)
    readme.write_text(head + text + tail)
    print(f"updated {readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
