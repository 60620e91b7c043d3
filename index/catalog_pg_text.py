"""Keyword search in the PostgreSQL catalog, with the SQLite catalog's "terms" semantics
(index/fulltext.py) rebuilt on ``tsvector``.

Text is normalised here the way FTS5's ``unicode61 remove_diacritics 2`` tokenizer reads it
(compatibility-decomposed, diacritics dropped, case folded, split into runs of letters and
digits, so ``IMG_2041.jpg`` is img / 2041 / jpg) and handed to ``to_tsvector('simple', ...)`` as
space-separated words: PostgreSQL's own parser would keep ``img_2041.jpg`` as one "file" token.

What a query matches is the same as on SQLite: every word (a phrase of its tokens; words with no
letter or digit are ignored), and either all of them within NEAR_GAP tokens of each other in one
column (FTS5's NEAR: tokens between the end of the first phrase and the start of the last), or
not all of them in the caption. The NEAR test runs here, over the positions PostgreSQL stores.

Differences, on purpose: the relevance is ``ts_rank`` normalised by the log of the text's
length (caption weight 1, tags and file name 2, as the BM25 column weights on SQLite), not BM25,
so scores differ in scale and close ties may order differently, while both sort best first;
and the raw ``fts5`` query syntax exists only on SQLite (BadQuery here).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

import psycopg

from index.errors import BadQuery
from index.fulltext import MAX_TERMS, NEAR_GAP, SYNTAXES

__all__ = ["normalise", "phrases", "search"]

_WORD = re.compile(r"[^\W_]+")
Phrase = tuple[str, ...]
Positions = dict[str, set[int]]


def normalise(text: str | None) -> str:
    """The tokens of ``text`` as unicode61 would read them, joined by spaces."""
    if not text:
        return ""
    folded = unicodedata.normalize("NFKD", text)
    folded = "".join(c for c in folded if not unicodedata.combining(c)).casefold()
    return " ".join(_WORD.findall(folded))


def phrases(query: str, syntax: str = "terms") -> list[Phrase]:
    """The phrases to look for (one per word of the first MAX_TERMS), empty for none.

    Raises BadQuery for a syntax other than "terms" (``fts5`` is SQLite's own language).
    """
    if syntax == "fts5":
        raise BadQuery(
            'keyword_syntax "fts5" needs the SQLite catalog; this service keeps its catalog in '
            'PostgreSQL: send keyword_syntax "terms"'
        )
    if syntax != "terms":
        raise BadQuery(f"unknown keyword syntax {syntax!r}; expected one of {list(SYNTAXES)}")
    found = (tuple(normalise(w).split()) for w in query.replace("\x00", " ").split()[:MAX_TERMS])
    return [p for p in found if p]


def _tsquery(phrase: Phrase) -> str:
    return " <-> ".join("'" + t.replace("'", "''").replace("\\", "\\\\") + "'" for t in phrase)


def search(conn: psycopg.Connection, found: Sequence[Phrase], limit: int,
           tags: Sequence[str] = ()) -> list[tuple[int, float]]:
    """(id, relevance, higher is better) of the rows matching ``found``, best first, at most
    ``limit``, only rows carrying every one of ``tags``. Raises ValueError for limit < 0."""
    if limit < 0:
        raise ValueError("limit must not be negative")
    if not found or limit == 0:
        return []
    queries = [_tsquery(p) for p in found]
    each = " AND ".join(
        "(caption_tsv @@ %s::tsquery OR tags_tsv @@ %s::tsquery OR name_tsv @@ %s::tsquery)"
        for _ in queries
    )
    args: list[object] = [q for q in queries for _ in range(3)]
    every = " & ".join(f"({q})" for q in queries)
    anyof = " | ".join(f"({q})" for q in queries)
    where = ""
    wanted = sorted(set(tags))
    if wanted:
        where = (" AND id IN (SELECT item_id FROM item_tags WHERE tag = ANY(%s)"
                 " GROUP BY item_id HAVING COUNT(*) = %s)")
    rows = conn.execute(
        "SELECT id, ts_rank(caption_tsv, %s::tsquery, 1) + 2 * ts_rank(tags_tsv, %s::tsquery, 1)"
        " + 2 * ts_rank(name_tsv, %s::tsquery, 1) AS relevance, caption_tsv @@ %s::tsquery"
        " FROM items WHERE (caption_tsv || tags_tsv || name_tsv) @@ %s::tsquery"
        f" AND {each}{where} ORDER BY relevance DESC, id",
        [anyof, anyof, anyof, every, every, *args, *([wanted, len(wanted)] if wanted else [])],
    ).fetchall()
    hits: list[tuple[int, float]] = []
    for item_id, relevance, all_in_caption in rows:
        if len(hits) >= limit:
            break
        if len(found) == 1 or not all_in_caption or _near_in_some_column(conn, item_id, found):
            hits.append((int(item_id), float(relevance)))
    return hits


def _near_in_some_column(conn: psycopg.Connection, item_id: int, found: Sequence[Phrase]) -> bool:
    rows = conn.execute(
        "SELECT c, lexeme, positions FROM ("
        " SELECT 1 AS c, (unnest(caption_tsv)).* FROM items WHERE id = %(id)s UNION ALL"
        " SELECT 2, (unnest(tags_tsv)).* FROM items WHERE id = %(id)s UNION ALL"
        " SELECT 3, (unnest(name_tsv)).* FROM items WHERE id = %(id)s) AS t"
        " WHERE lexeme = ANY(%(lex)s)",
        {"id": item_id, "lex": sorted({t for p in found for t in p})},
    ).fetchall()
    columns: dict[int, Positions] = {}
    for column, lexeme, positions in rows:
        columns.setdefault(column, {})[lexeme] = set(positions)
    return any(near(where, found, NEAR_GAP) for where in columns.values())


def near(where: Positions, found: Sequence[Phrase], gap: int) -> bool:
    """True when one occurrence of every phrase fits in a window with at most ``gap`` tokens
    between the end of the first phrase and the start of the last (FTS5's NEAR)."""
    starts: list[list[int]] = []
    for phrase in found:
        first = sorted(where.get(phrase[0], ()))
        at = [s for s in first if all(s + k in where.get(t, ()) for k, t in enumerate(phrase))]
        if not at:
            return False
        starts.append(at)
    for begin in sorted({s for at in starts for s in at}):
        chosen = [next((s for s in at if s >= begin), None) for at in starts]
        if any(s is None for s in chosen):
            break  # later beginnings only lose phrases
        heads = [len(p) for p, s in zip(found, chosen, strict=True) if s == begin]
        if not heads:
            continue
        last = max(s for s in chosen if s is not None)
        if last - (begin + max(heads) - 1) - 1 <= gap:
            return True
    return False
