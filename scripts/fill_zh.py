"""Fill the Simplified Chinese catalogue from scripts/zh_hans.json (msgid -> msgstr).

Workflow: `make messages` (xgettext needed, developers only), add new strings to the JSON,
run this script. The .po files are committed; `make` compiles them with polib.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import polib

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    table = json.loads((ROOT / "scripts" / "zh_hans.json").read_text(encoding="utf-8"))
    # One more file per feature area (scripts/zh_hans/*.json), so parallel work never edits
    # the same table.
    for extra in sorted((ROOT / "scripts" / "zh_hans").glob("*.json")):
        table.update(json.loads(extra.read_text(encoding="utf-8")))
    po = polib.pofile(str(ROOT / "locale" / "zh_Hans" / "LC_MESSAGES" / "django.po"))
    missing = []
    for entry in po:
        if entry.msgid in table:
            entry.msgstr = table[entry.msgid]
            if "fuzzy" in entry.flags:
                entry.flags.remove("fuzzy")
        elif not (entry.msgstr or any(entry.msgstr_plural.values())) or "fuzzy" in entry.flags:
            # A fuzzy entry is msgmerge's guess from a similar msgid: never compiled, so the
            # page shows English until the JSON has the string.
            missing.append(entry.msgid)
    po.save()
    for msgid in missing:
        print(f"untranslated: {msgid[:70]!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
