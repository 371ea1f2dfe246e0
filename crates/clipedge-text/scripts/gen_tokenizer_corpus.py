#!/usr/bin/env python3
"""Writes tests/data/tokenizer_corpus.json: hand-picked strings for the compact tokenizer's
parity test (tests/compact_tokenizer.rs), one JSON string each. The test adds seeded random
mixes of these classes on top. Rerun after editing; the file is committed."""
import json
import os
import unicodedata

words = "a photo of a dog running on the beach at sunset with two children and a red kite".split()

corpus = [
    # plain text, captions, casing
    "a photo of a cat", "A PHOTO OF A CAT", "A Photo Of A Cat", "cat", "Cat", "CAT", "x", "I",
    "the quick brown fox jumps over the lazy dog",
    "The Quick Brown Fox Jumps Over The Lazy Dog!",
    "a diagram of the krebs cycle, labelled, high resolution",
    "an oil painting of a lighthouse in a storm, by a dutch master, 17th century",
    "hello world", "Hello, World!", "HELLO WORLD!!!", "hello\tworld", "hello\nworld", "hello\r\nworld",
    # apostrophes and contractions
    "it's", "IT'S", "It'S", "don't", "DON'T", "we're", "WE'RE", "i've", "I'VE", "i'm", "I'M",
    "you'll", "YOU'LL", "he'd", "HE'D", "'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'", "''", "'''s",
    "!'s", "rock'n'roll", "o'clock", "the dog's bone", "the dogs' bones", "it’s", "don’t", "‘quoted’",
    "“double quoted”", "„low quote“", "«guillemets»", "ʼn", "`backtick`", "it''s", "'sss", "'ss 'tt",
    "l'homme", "aujourd'hui", "can't won't shan't", "y'all'd've",
    # accents, combining marks, NFC vs NFD
    "café", "cafe\u0301", "CAFÉ", "CAFE\u0301", "naïve", "nai\u0308ve", "résumé", "re\u0301sume\u0301",
    "Ångström", "\u212bngstr\u00f6m", "A\u030angstro\u0308m", "ﬁre ﬂy", "Ĳssel", "ŉ", "ǅemal", "ǈ ǋ ǲ",
    "\u0301", "\u0301\u0302\u0303", "e\u0301\u0302\u0303\u0304", "a\u0323\u0307", "a\u0307\u0323",
    "\u1100\u1161\u11a8", "\u1100\u1161", "ḱṷṓn", "Ṩ", "s\u0323\u0307", "q\u0307\u0323", "\u0344",
    "\u0958\u0959", "\u2126 ohm", "\u00c5", "Zürich Straße", "STRASSE ẞ", "İstanbul", "ıi", "ΟΔΟΣ ΟΔΟΣΣ",
    "ǰ", "ﬀ ﬃ ﬄ ﬅ ﬆ", "Ǳ", "ß", "Ⅻ ⅻ", "ⓐⓑⓒ", "Ⓐ", "ꭰꭱ Ꭰ", "ᲐᲑᲒ", "Ꞵ", "Ɐ",
    "Việt Nam", "Tiếng Việt có dấu", "Ελληνικά", "Русский язык", "ЁЖИК", "Ѐ", "עברית", "ܐܪܡܝܐ",
    # CJK, Korean, Japanese, Thai, Hindi, Arabic
    "한국어 텍스트", "안녕하세요 세계", "서울의 밤 풍경", "日本語のテキスト", "東京タワーの夜景", "ひらがな カタカナ",
    "ｶﾀｶﾅ ﾊﾝｶｸ", "ｶﾞｷﾞ", "中文文本", "北京的天安门广场", "繁體中文", "漢字かな交じり文", "𠀀𠀁 𪜀 𫝀 𫠠 𬺰",
    "\U00031350", "\U0002ebf0", "ภาษาไทย", "สวัสดีครับ", "हिन्दी", "नमस्ते दुनिया", "क़", "العربية", "مرحبا بالعالم",
    "السَّلَامُ عَلَيْكُمْ", "٠١٢٣٤٥٦٧٨٩", "۱۲۳", "১২৩", "অসমীয়া", "தமிழ்", "ಕನ್ನಡ", "ქართული", "Հայերեն",
    "አማርኛ", "ᠮᠣᠩᠭᠣᠯ", "ᠮ\u180eᠣ", "ꦗꦮ", "𐌰𐌱", "𓀀𓀁", "𞤀𞤁", "\U0001e4d0\U0001e4d1", "\U00011f04\U00011f05",
    # emoji
    "🙂", "😀😃😄", "🐶 dog", "dog🐶", "I ❤️ NY", "❤", "❤\ufe0f", "☺️", "👍", "👍🏻", "👍🏽", "👍🏿", "👋🏼 hi",
    "👨‍👩‍👧‍👦", "👩‍💻", "🧑🏾‍🚀", "🏳️‍🌈", "🏴‍☠️", "🇺🇸", "🇯🇵🇰🇷🇨🇳", "🇩🇪 germany", "🏴󠁧󠁢󠁳󠁣󠁴󠁿", "1️⃣", "#️⃣", "*️⃣",
    "🫠🫡🫥", "🦀 rust", "✨✨✨", "🔥🔥", "💯", "🎉🎊", "©®™", "♻", "⚽️⚾️", "🤷‍♂️", "🤷🏻‍♀️", "👁️‍🗨️",
    "emoji 😀 in the middle", "😀" * 40,
    # whitespace of every kind
    " ", "  ", "\t", "\n", "\r\n", "\u00a0", "\u3000", "\u2028", "\u2029", "\u0085", "\u1680", "\u2000\u2001\u200a",
    "\u202f", "\u205f", "a\u00a0b", "a\u2028b", "a\u2029b", "a\u3000b", "a\u0085b", "a\u1680b", "a\u2009b",
    "a\u200bb", "\u200b", "\u200c", "\u200d", "a\u200cb", "a\u200db", "\u2060", "a\u2060b", "\ufeff", "\ufeffhello",
    "a\u180eb", "\u180e", "  leading", "trailing  ", "  both  ", "many     spaces", "\t\ttabs\t\t",
    "new\n\nlines\n", "mixed \t\n\u00a0\u3000 space", "\u00a0\u00a0text\u00a0\u00a0",
    # control and special characters
    "\x00", "\x00\x01\x02", "a\x00b", "\x07bell", "\x1b[31mred\x1b[0m", "\x7f", "a\x7fb", "\x80\x85\x9f",
    "a\x9fb", "\x0b", "a\x0bb", "\x0c", "a\x0cb", "\ufffd", "a\ufffdb", "\ue000", "a\ue000b", "\U000f0000",
    "\ufff9\ufffa\ufffb", "\ufffc", "\u206a\u206f", "\u00ad", "soft\u00adhyphen", "\u0378", "a\u0378b",
    "\uffff", "\U0010fffd", "\u061c", "\u200e\u200f", "\u202a\u202e", "\u2066\u2069", "\U000e0001",
    "\U000e0041", "\ud7ff", "\u00ad\u200b\u2060", "\x01\x02\x03\x04\x05\x06\x08\x0e\x0f",
    # literal special tokens
    "<|endoftext|>", "<|startoftext|>", "<|endoftext|><|endoftext|>", "hello<|endoftext|>world",
    "<|startoftext|>a photo<|endoftext|>", " <|endoftext|> ", "<|endoftext|", "<|ENDOFTEXT|>",
    "<<|endoftext|>>", "<|endoftext|>\x00", "\x00<|endoftext|>", "<|endoftext|>" * 5,
    "[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]", "[CLS] hello [SEP]", "[cls]", "[CLS][SEP]",
    "hello[MASK]world", "[[CLS]]", "[CLS", " [SEP] ", "[UNK][UNK]", "[CLS]<|endoftext|>",
    # URLs, e-mails, numbers, punctuation
    "https://example.com/path?query=1&x=y#frag", "http://www.Example.COM/Foo_Bar-baz.html",
    "ftp://files.example.org:2121/pub/file.tar.gz", "www.google.com", "user@example.com",
    "First.Last+tag@sub.example.co.uk", "mailto:someone@example.org", "C:\\Users\\me\\file.txt", "/usr/bin/env",
    "0", "1", "42", "1234567890", "3.14159", "1,234,567.89", "-42", "+1 (555) 123-4567", "1e10", "0x1F",
    "2024-05-09", "12:34:56", "50%", "$100", "€100", "£5", "¥500", "₹100", "½ ¼ ¾", "x² + y³", "H₂O",
    "１２３", "ＡＢＣ ａｂｃ", "！？", "№5", "3rd 21st 2nd", "v1.2.3", "#hashtag", "@mention", "C++", "C#",
    "!!!", "???", "...", "!?!?", "—", "–", "…", "--", "---", "....", "!@#$%^&*()", "<>[]{}()", "~`|\\",
    "a.b.c", "a-b-c", "a_b_c", "a/b/c", "a|b", "(a)", "[a]", "{a}", "\"a\"", "***", "=>", "->", "::", ";;",
    "¡hola!", "¿qué?", "。、「」", "，！？", "・", "«»", "‹›", "†‡", "§¶", "•", "‰", "′″", "¦",
    # HTML entities
    "&amp;", "&amp;amp;", "Tom &amp; Jerry", "&lt;b&gt;bold&lt;/b&gt;", "&quot;hi&quot;", "it&#39;s",
    "it&#x27;s", "&apos;", "a&nbsp;b", "&nbsp;", "&copy;", "&AMP;", "&amp",
    # long words, long captions
    "a" * 99, "a" * 100, "a" * 101, "supercalifragilisticexpialidocious", "pneumonoultramicroscopicsilicovolcanoconiosis",
    "x" * 300, "ab" * 150, "日本" * 60, "😀" * 101, "é" * 101, "e\u0301" * 60,
    " ".join(words * 5), " ".join(words * 40), ", ".join(words * 30), "".join(words * 10),
    ("A detailed photograph of " + ", ".join(words) + ". ") * 12,
]
corpus += [c for c in "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"]
corpus += [chr(c) for c in range(0x20, 0x7f)]
corpus += [chr(c) + "x" for c in range(0xa0, 0x180)]
corpus += [chr(0xff01 + i) for i in range(0, 0x5e, 3)]
corpus += ["\u3131\u314f", "ﾞ", "ﾟ", "ｰ", "ﾠ", "ￃ", "ￂ", "￠￡￢￣￤￥￦", "￨￩￪￫￬￭￮"]
corpus += [unicodedata.normalize("NFD", s) for s in ["Ελληνικά", "Việt Nam", "한국어", "ガギグ", "Ǖǖ"]]
corpus += [unicodedata.normalize("NFKD", s) for s in ["ﬁ", "①", "㎏", "ｶﾞ"]]

out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "tokenizer_corpus.json")
with open(out, "w") as f:
    f.write("[\n")
    f.write(",\n".join(json.dumps(s, ensure_ascii=True) for s in corpus))
    f.write("\n]\n")
print(out, len(corpus))
