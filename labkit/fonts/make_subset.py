"""Rebuild LabKitSansSC-Regular.otf, the small CJK font bundled with labkit.

The font is a glyph subset of Noto Sans CJK SC Regular (SIL OFL 1.1), renamed
to "LabKit Sans SC" so it never clashes with a full Noto install. It covers
all of GB2312 (6,763 hanzi plus its symbols), ASCII, Latin-1 and the common
punctuation, math, arrow and full-width blocks. Run by hand, never at import:

    apt-get download fonts-noto-cjk && dpkg-deb -x fonts-noto-cjk_*.deb ex
    python labkit/fonts/make_subset.py \
        ex/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc
"""

from __future__ import annotations

import sys
from pathlib import Path

from fontTools import subset
from fontTools.ttLib import TTCollection

FAMILY = "LabKit Sans SC"
POSTSCRIPT_NAME = "LabKitSansSC-Regular"
OUTPUT = Path(__file__).with_name(POSTSCRIPT_NAME + ".otf")

# Unicode blocks kept besides GB2312 (start, end) inclusive.
EXTRA_RANGES = [
    (0x0020, 0x007E),  # ASCII
    (0x00A0, 0x017F),  # Latin-1, Latin Extended-A
    (0x01CD, 0x01DC),  # pinyin tone letters (ǎ ǐ ǒ ǔ ǖ ...)
    (0x0370, 0x03FF),  # Greek
    (0x2000, 0x206F),  # general punctuation
    (0x2070, 0x20CF),  # super/subscripts, currency
    (0x2100, 0x23FF),  # letterlike, number forms, arrows, math operators
    (0x2460, 0x26FF),  # circled numbers, box drawing, shapes, symbols
    (0x3000, 0x30FF),  # CJK punctuation, kana
    (0xFF00, 0xFFEF),  # full-width forms
]


def gb2312_chars() -> set[int]:
    """All code points encodable in GB2312 (rows 1-9 symbols, 16-87 hanzi)."""
    chars = set()
    for row in range(1, 88):
        for cell in range(1, 95):
            try:
                chars.add(ord(bytes([0xA0 + row, 0xA0 + cell]).decode("gb2312")))
            except UnicodeDecodeError:
                pass
    return chars


def main(ttc_path: str) -> None:
    fonts = TTCollection(ttc_path).fonts
    font = next(f for f in fonts if f["name"].getDebugName(1) == "Noto Sans CJK SC")
    unicodes = gb2312_chars()
    for start, end in EXTRA_RANGES:
        unicodes.update(range(start, end + 1))

    options = subset.Options()
    options.layout_features = []  # matplotlib does no OpenType shaping
    options.drop_tables += ["BASE", "VORG", "vhea", "vmtx", "GSUB", "GPOS", "GDEF"]
    options.name_IDs = [0, 7, 8, 9, 11, 12, 13, 14]  # keep copyright and license
    options.notdef_outline = True
    options.hinting = False  # matplotlib auto-hints glyphs itself
    subsetter = subset.Subsetter(options)
    subsetter.populate(unicodes=unicodes)
    subsetter.subset(font)

    name = font["name"]
    for name_id, value in [
        (1, FAMILY),
        (2, "Regular"),
        (3, POSTSCRIPT_NAME + ";labkit-subset"),
        (4, FAMILY + " Regular"),
        (5, "Version 2.004; subset of Noto Sans CJK SC 2.004"),
        (6, POSTSCRIPT_NAME),
        (10, "Subset of Noto Sans CJK SC Regular (GB2312 + common symbols)."),
    ]:
        name.setName(value, name_id, 3, 1, 0x409)
    cff = font["CFF "].cff
    cff.fontNames = [POSTSCRIPT_NAME]
    cff.topDictIndex[0].FullName = FAMILY + " Regular"
    cff.topDictIndex[0].FamilyName = FAMILY
    font.save(OUTPUT)
    print(f"wrote {OUTPUT} ({OUTPUT.stat().st_size / 1e6:.2f} MB, {len(font.getBestCmap())} chars)")


if __name__ == "__main__":
    main(sys.argv[1])
