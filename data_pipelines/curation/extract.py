"""Main-content text extraction from HTML with resiliparse.

Bytes are decoded with the HTTP charset when it names a known codec, else
with resiliparse's encoding detection; resiliparse's main-content heuristics
drop navigation, headers, footers and other boilerplate elements.
"""
from __future__ import annotations

import codecs
from typing import Optional


def decode_html(html: bytes, charset: str = "") -> str:
  from resiliparse.parse.encoding import bytes_to_str, detect_encoding  # pylint: disable=g-import-not-at-top
  if charset:
    try:
      codecs.lookup(charset)
      return html.decode(charset, errors="replace")
    except LookupError:
      pass
  return bytes_to_str(html, detect_encoding(html))


def html_to_text(html: bytes | str, c, charset: str = "") -> Optional[str]:
  """Main-content plain text with line/paragraph structure, or None if the
  HTML cannot be parsed or holds no text. `c` is config.extract."""
  from resiliparse.extract.html2text import extract_plain_text  # pylint: disable=g-import-not-at-top
  from resiliparse.parse.html import HTMLTree  # pylint: disable=g-import-not-at-top
  if isinstance(html, bytes):
    if len(html) > c.max_html_bytes:
      html = html[:c.max_html_bytes]
    html = decode_html(html, charset)
  try:
    tree = HTMLTree.parse(html)
    text = extract_plain_text(tree, preserve_formatting=c.preserve_formatting,
                              main_content=c.main_content, list_bullets=c.list_bullets,
                              alt_texts=c.alt_texts, links=False, form_fields=False,
                              noscript=False)
  except Exception:  # pylint: disable=broad-except
    return None
  text = text.strip()
  return text or None
