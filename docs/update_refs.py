"""Re-point docs/derivatives.md `file:line` references at the line that now holds the quoted text.

Run ``python docs/update_refs.py`` after editing a file the guide quotes (the test
test_derivatives_doc_references_are_current says when); where the quoted text moved, the reference
follows it to its nearest occurrence. Text that no longer exists is reported and must be rewritten by hand.
"""

import re
import sys
from pathlib import Path

root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent
doc = root / "docs/derivatives.md"
text = doc.read_text()
pattern = re.compile(r"\[`([\w/.]+):(\d+)`\]\(([^)]*)\) `([^`]+)`")


def fix(m):
    path, line, href, quoted = m.group(1), int(m.group(2)), m.group(3), m.group(4)
    lines = (root / path).read_text().splitlines()
    if line <= len(lines) and quoted.strip() in lines[line - 1]:
        return m.group(0)
    hits = [i + 1 for i, s in enumerate(lines) if quoted.strip() in s]
    if not hits:
        print("NOT FOUND", path, line, quoted)
        return m.group(0)
    new = min(hits, key=lambda h: abs(h - line))
    print(f"{path}:{line} -> {new}")
    href = re.sub(r"#L\d+$", f"#L{new}", href)
    return f"[`{path}:{new}`]({href}) `{quoted}`"


text2 = pattern.sub(fix, text)
doc.write_text(text2)
