"""English numbers as they are spoken, so that a character model can align "1984" or "21st".

A character CTC model hears "nineteen eighty four", never sees "1984"; forced alignment needs the
letters. `spell_numbers` rewrites every number in a piece of text:

* cardinals: 42 -> forty two, 1,000,000 -> one million, -3 -> minus three (no "and": one hundred five)
* ordinals: 1st -> first, 21st -> twenty first, 112th -> one hundred twelfth
* years: a plain four-digit number from 1010 to 1999 or 2010 to 2099 -> 1984 -> nineteen eighty four,
  1905 -> nineteen oh five, 1900 -> nineteen hundred, 2023 -> twenty twenty three (2000-2009 and
  other four-digit numbers stay cardinals: 2005 -> two thousand five); 1980s -> nineteen eighties
* decimals: 3.14 -> three point one four, .5 -> point five
* percent: 50% -> fifty percent; & -> and
* digit strings with a leading zero (007) or of more than 15 digits: one digit at a time

It is a reading, not the only one: "1500 people" becomes "fifteen hundred people".
"""

from __future__ import annotations

import re

ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
        "sixteen seventeen eighteen nineteen").split()
TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
SCALES = ("", "thousand", "million", "billion", "trillion")
IRREGULAR_ORDINALS = {"one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth",
                      "nine": "ninth", "twelve": "twelfth"}

_NUMBER = re.compile(r"""
    (?P<minus>(?<!\w)[-\u2212])?                       # a sign, where no word precedes it
    (?P<whole>\d{1,3}(?:,\d{3})+(?!\d)|\d+)?           # digits, optionally grouped by commas
    (?:\.(?P<fraction>\d+))?                           # decimals
    (?P<suffix>(?:st|nd|rd|th|'?s)(?![a-z]))?          # ordinal (21st) or plural (1980s)
    (?P<percent>%)?
""", re.VERBOSE | re.IGNORECASE)


def cardinal(n: int) -> str:
    """0 -> zero, 115 -> one hundred fifteen, 2_000_001 -> two million one."""
    if n < 0:
        return "minus " + cardinal(-n)
    if n < 20:
        return ONES[n]
    if n < 100:
        return TENS[n // 10] + ("" if n % 10 == 0 else " " + ONES[n % 10])
    if n < 1000:
        return ONES[n // 100] + " hundred" + ("" if n % 100 == 0 else " " + cardinal(n % 100))
    if n >= 1000 ** len(SCALES):
        return digits(str(n))
    words = []
    for power in range(len(SCALES) - 1, -1, -1):
        group = n // 1000 ** power % 1000
        if group:
            words.append(cardinal(group) + (" " + SCALES[power] if power else ""))
    return " ".join(words)


def ordinal(n: int) -> str:
    """1 -> first, 21 -> twenty first, 100 -> one hundredth."""
    *rest, last = cardinal(n).split()
    if last in IRREGULAR_ORDINALS:
        last = IRREGULAR_ORDINALS[last]
    elif last.endswith("y"):
        last = last[:-1] + "ieth"
    else:
        last += "th"
    return " ".join(rest + [last])


def year(n: int) -> str:
    """1984 -> nineteen eighty four, 1905 -> nineteen oh five, 1900 -> nineteen hundred."""
    high, low = divmod(n, 100)
    if low == 0:
        return cardinal(high) + " hundred"
    return cardinal(high) + " " + (f"oh {ONES[low]}" if low < 10 else cardinal(low))


def is_year(text: str) -> bool:
    return len(text) == 4 and (1010 <= int(text) <= 1999 or 2010 <= int(text) <= 2099)


def digits(text: str) -> str:
    """007 -> zero zero seven."""
    return " ".join(ONES[int(d)] for d in text)


def plural(words: str) -> str:
    """nineteen eighty -> nineteen eighties (for decades: 1980s)."""
    return words[:-1] + "ies" if words.endswith("y") else words + "s"


def spell_number(match: re.Match) -> str:
    whole, fraction, suffix = match["whole"], match["fraction"], (match["suffix"] or "").lower()
    if whole is None and fraction is None:
        return match[0]  # a lone sign or suffix: not a number
    plain = (whole or "").replace(",", "")
    if fraction is None and suffix in ("st", "nd", "rd", "th"):
        words = ordinal(int(plain))
    elif fraction is None and (len(plain) > 15 or (len(plain) > 1 and plain[0] == "0")):
        words = digits(plain)
    elif fraction is None and "," not in whole and not match["minus"] and not match["percent"] and is_year(plain):
        words = year(int(plain))
    else:
        words = cardinal(int(plain)) if plain else ""
        if fraction is not None:
            words = (words + " point " + digits(fraction)).strip()
    if suffix in ("s", "'s"):
        words = plural(words)
    if match["minus"]:
        words = "minus " + words
    if match["percent"]:
        words += " percent"
    return f" {words} "


def spell_numbers(text: str) -> str:
    """Every number in `text` in words (see the module's docstring); the rest unchanged."""
    return " ".join(_NUMBER.sub(spell_number, text.replace("&", " and ")).split())
