"""MovieLens 100K (ml-100k) as the items, interactions and users input tables.

A public benchmark with real users, so the pipeline's quality can be compared with published results.
Ids keep MovieLens's own numbers as strings ("242"), so rows trace back to the source files. Every rating
becomes one interaction of type "rating"; movies have no provider in ml-100k, so brand stays null.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pandas as pd

ITEM_FIELDS = ["item_id", "title", "release_date", "video_release_date", "imdb_url"]
YEAR_IN_TITLE = re.compile(r"\((\d{4})\)\s*$")


def load_movielens(path: str | Path) -> dict[str, pd.DataFrame]:
    """The ml-100k files under `path` as frames matching the items, interactions and users contracts."""
    directory = Path(path)
    genres = _read(directory, "u.genre", names=["genre", "index"])["genre"].tolist()
    return {
        "items": _items(_read(directory, "u.item", names=ITEM_FIELDS + genres), genres),
        "interactions": _interactions(
            _read(directory, "u.data", sep="\t", names=["user_id", "item_id", "rating", "unix_ts"])
        ),
        "users": _users(_read(directory, "u.user", names=["user_id", "age", "gender", "occupation", "zip"])),
    }


def _read(directory: Path, name: str, *, sep: str = "|", names: list[str]) -> pd.DataFrame:
    """One ml-100k file (ISO-8859-1 text) as strings; a header line, which some copies add, is skipped."""
    file = directory / name
    if not file.is_file():
        raise FileNotFoundError(
            f"MovieLens file {file} not found: expected the ml-100k release (u.data, u.item, u.user, "
            f"u.genre) in {directory}; download it from https://grouplens.org/datasets/movielens/100k/ "
            f"and pass that directory"
        )
    # QUOTE_NONE: the files never quote fields, so a '"' in a title is text, not the start of a quoted field.
    frame = pd.read_csv(
        file,
        sep=sep,
        names=names,
        header=None,
        dtype=str,
        keep_default_na=False,
        quoting=csv.QUOTE_NONE,
        encoding="latin-1",
    )
    # Data rows hold a numeric id (u.genre: its second field, the genre index); a first row without one is
    # a header line, which some copies of the release add to u.user.
    key = "index" if name == "u.genre" else names[0]
    if len(frame) and not frame[key].iloc[0].isdigit():
        frame = frame.iloc[1:]
    return frame[frame[names[0]] != ""].reset_index(drop=True)  # u.genre ends with a blank line


def _year(title: str, release_date: str) -> str | None:
    """The year in the title "(1995)", else the release date's ("01-Jan-1995"); None when neither has one."""
    found = YEAR_IN_TITLE.search(title)
    if found:
        return found.group(1)
    return release_date[-4:] if release_date[-4:].isdigit() else None


def _items(raw: pd.DataFrame, genres: list[str]) -> pd.DataFrame:
    flags = raw[genres] == "1"
    genre_lists = flags.apply(lambda row: "|".join(row.index[row]), axis=1)
    years = [_year(title, date) for title, date in zip(raw["title"], raw["release_date"], strict=True)]
    attributes = [
        {
            name: value
            for name, value in {
                "genres": genre_list,
                "year": year,
                "decade": year and f"{year[:3]}0s",
            }.items()
            if value  # skip what the source leaves empty
        }
        for genre_list, year in zip(genre_lists, years, strict=True)
    ]
    return pd.DataFrame(
        {
            "item_id": raw["item_id"],
            "title": raw["title"],
            # The first genre flagged, in u.genre order; None for a movie with no genre flag.
            "category": flags.idxmax(axis=1).where(flags.any(axis=1), None),
            "brand": None,
            "description": None,
            "price": None,
            "attributes": attributes,
        }
    )


def _interactions(raw: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": raw["user_id"],
            "item_id": raw["item_id"],
            "event_type": "rating",
            # Unix seconds are UTC; the tables hold UTC as timezone-naive timestamps.
            "event_ts": pd.to_datetime(raw["unix_ts"].astype("int64"), unit="s"),
            "value": raw["rating"].astype(float),
            "query_id": None,
        }
    )


def _users(raw: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": raw["user_id"],
            "gender": raw["gender"],
            "age": raw["age"].astype(int),
            "occupation": raw["occupation"],
            "segment": None,
        }
    )
