"""Write the golden object files from object_cases.py (one per format version). Run only for a
deliberate, versioned format change: python tests/golden/make_golden_objects.py"""

from __future__ import annotations

import pathlib
import sys

HERE = pathlib.Path(__file__).parent
sys.path.insert(0, str(HERE))

from object_cases import object_none  # noqa: E402


def files() -> dict[str, bytes]:
    return {"object_none.bin": object_none(1)[0], "object_none_v2.bin": object_none(2)[0]}


if __name__ == "__main__":
    for name, data in files().items():
        (HERE / name).write_bytes(data)
        print(f"{name}: {len(data)} bytes")
