import pandas as pd
import pytest

from llmrank_spark.data import load_movielens
from llmrank_spark.lakehouse import contract, frame_from_pandas, read_table, write_table

GENRES = "unknown|0\nAction|1\nComedy|2\n\n"  # u.genre ends with a blank line, as in the release


@pytest.fixture(scope="module")
def movielens(ml100k_dir):
    return load_movielens(ml100k_dir)


def _write_mini_release(directory, user_header: str = "") -> None:
    """Two movies, two users and three ratings in the ml-100k file formats."""
    directory.mkdir()
    (directory / "u.genre").write_text(GENRES)
    (directory / "u.item").write_bytes(
        "1|Toy Story (1995)|01-Jan-1995||http://x|0|1|1\n"
        "2|Caf\u00e9 Express|12-Mar-1980||http://y|0|0|1\n".encode("latin-1")
    )
    (directory / "u.user").write_text(user_header + "1|24|M|technician|85711\n2|53|F|other|94043\n")
    (directory / "u.data").write_text("1\t1\t5\t881250949\n2\t1\t3\t891717742\n2\t2\t4\t878887116\n")


def test_full_release_has_the_published_counts(movielens):
    assert len(movielens["interactions"]) == 100_000
    assert len(movielens["users"]) == 943
    assert len(movielens["items"]) == 1682


def test_ids_are_the_original_numbers_and_a_known_rating_is_kept(movielens):
    ratings = movielens["interactions"]
    row = ratings[(ratings["user_id"] == "196") & (ratings["item_id"] == "242")]
    assert row["value"].tolist() == [3.0]
    assert row["event_ts"].tolist() == [pd.Timestamp("1997-12-04 15:55:49")]  # unix 881250949 in UTC
    assert set(ratings["event_type"]) == {"rating"}
    assert ratings["value"].between(1, 5).all()


def test_genres_and_year_are_parsed(movielens):
    toy_story = movielens["items"].set_index("item_id").loc["1"]
    assert toy_story["title"] == "Toy Story (1995)"
    assert toy_story["category"] == "Animation"
    assert toy_story["attributes"] == {
        "genres": "Animation|Children's|Comedy",
        "year": "1995",
        "decade": "1990s",
    }
    assert toy_story["brand"] is None


def test_users_keep_gender_age_and_occupation(movielens):
    user = movielens["users"].set_index("user_id").loc["1"]
    assert (user["gender"], user["age"], user["occupation"]) == ("M", 24, "technician")
    assert user["segment"] is None
    assert set(movielens["users"]["gender"]) == {"F", "M"}


def test_frames_convert_to_their_contracts_and_items_round_trip(spark, config, movielens):
    for name, frame in movielens.items():
        df = frame_from_pandas(spark, frame, name)
        assert [f.name for f in df.schema] == [c.name for c in contract(name).columns], name
    write_table(frame_from_pandas(spark, movielens["items"], "items"), config, "items")
    back = read_table(spark, config, "items").toPandas().set_index("item_id")
    assert len(back) == 1682
    assert back.loc["242", "title"] == movielens["items"].set_index("item_id").loc["242", "title"]
    assert dict(back.loc["1", "attributes"])["genres"] == "Animation|Children's|Comedy"


@pytest.mark.parametrize("user_header", ["", "id|age|gender|occupation|\n"])
def test_a_release_with_or_without_a_user_header_parses(tmp_path, user_header):
    directory = tmp_path / "ml"
    _write_mini_release(directory, user_header)
    frames = load_movielens(directory)
    items = frames["items"].set_index("item_id")
    assert items.loc["1", "category"] == "Action"
    assert items.loc["2", "title"] == "Caf\u00e9 Express"  # latin-1 text decoded
    assert items.loc["2", "attributes"] == {"genres": "Comedy", "year": "1980", "decade": "1980s"}
    assert frames["users"]["user_id"].tolist() == ["1", "2"]
    assert frames["users"]["age"].tolist() == [24, 53]
    assert frames["interactions"]["value"].tolist() == [5.0, 3.0, 4.0]


def test_missing_files_name_the_file_and_where_the_dataset_belongs(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"u\.genre.*ml-100k"):
        load_movielens(tmp_path / "absent")
    directory = tmp_path / "partial"
    _write_mini_release(directory)
    (directory / "u.data").unlink()
    with pytest.raises(FileNotFoundError, match=r"u\.data"):
        load_movielens(directory)
