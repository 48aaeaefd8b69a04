"""Survey exports: Google Forms, Qualtrics (three header rows), Excel; Likert, multi-select, respondents, explode.

Every fixture file is written here by hand, so that the line numbers the tests expect can be read
off the text itself.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tunesmith.collect import survey
from tunesmith.collect.sink import COLLECTOR
from tunesmith.config import SourceSpec
from tunesmith.data.fields import FieldExpr
from tunesmith.data.raw import Raw
from tunesmith.errors import DataError

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "collect" / "survey_google_forms.csv"
MEAL = "How satisfied are you with your meal?"
ORDER = "What did you order? (select all)"

GOOGLE_FORMS = f'''Timestamp,Email Address,{MEAL},{ORDER},Any comments?
5/3/2024 12:04:11,ana@example.com,Very satisfied,"Burger, Fries, Lemonade","Juicy burger, crisp fries."
5/3/2024 12:09:52,ben@example.com,  very   DISSATISFIED ,Pizza,Cold pizza.
5/3/2024 12:15:30,ana@example.com,4,"Salad, Fish and chips",
5/3/2024 12:21:08,,Satisfied,,Anonymous but happy.
5/3/2024 12:26:45,dev@example.com,Kind of okay,Burger,Meh.
'''

# Row 2 (the question texts) spans lines 2-3 and the first response's comment spans lines 6-7, so the
# data rows sit on lines 5, 6 (to 7), 8 and 9: not "row index + 3".
QUALTRICS = '''StartDate,EndDate,Status,ResponseId,Q1,Q2,Q3,Q4
Start Date,End Date,Response Type,Response ID,How much do you agree: the food was worth its price?,"Which days do you visit?
(select all that apply)",How often do you eat out?,What should we improve?
"{""ImportId"":""startDate"",""timeZone"":""America/Denver""}","{""ImportId"":""endDate"",""timeZone"":""America/Denver""}","{""ImportId"":""status""}","{""ImportId"":""_recordId""}","{""ImportId"":""QID1""}","{""ImportId"":""QID2""}","{""ImportId"":""QID3""}","{""ImportId"":""QID4""}"
2024-05-03 10:01:00,2024-05-03 10:04:12,IP Address,R_1aBcD,Strongly agree,"Friday,Saturday",Often,Nothing
2024-05-03 10:05:00,2024-05-03 10:09:40,IP Address,R_2eFgH,Somewhat agree,Monday,Sometimes,"Faster service,
more vegetarian dishes"
2024-05-03 10:11:00,2024-05-03 10:12:02,IP Address,R_3iJkL,Totally agree,Sunday,Never,
2024-05-03 10:15:00,2024-05-03 10:17:30,IP Address,R_4mNoP,Neither agree nor disagree,,Rarely,Louder music
'''


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8", newline="")
    return path


def spec(path: Path, **survey_spec: Any) -> SourceSpec:
    return SourceSpec(path=path, survey=survey_spec)


def read(path: Path, needed: dict[str, str] | None = None, **survey_spec: Any) -> list[Raw]:
    exprs = {name: FieldExpr(expr) for name, expr in (needed or {}).items()}
    return list(survey.read(spec(path, **survey_spec), exprs))


def google(tmp_path: Path, **extra: Any) -> list[Raw]:
    path = write(tmp_path / "form.csv", GOOGLE_FORMS)
    return read(path, likert={MEAL: "satisfied5"}, multi_select=[ORDER], respondent="Email Address", **extra)


def test_google_forms_likert_multi_select_and_respondent(tmp_path: Path) -> None:
    rows = google(tmp_path)
    assert [r.line for r in rows] == [2, 3, 4, 5, 6]
    first, second, third, anonymous, bad = rows
    assert first.record is not None and second.record is not None and third.record is not None
    assert first.record[MEAL] == 5
    assert second.record[MEAL] == 1  # case and inner/outer spaces do not matter
    assert third.record[MEAL] == 4 and isinstance(third.record[MEAL], int)  # a numeric answer stays a number
    # Google Forms joins choices with ", " (the default separator for this format, recognised by "Timestamp")
    assert first.record[ORDER] == ["Burger", "Fries", "Lemonade"]
    assert second.record[ORDER] == ["Pizza"]
    assert anonymous.record is not None and anonymous.record[ORDER] == []
    # the respondent id groups a person's answers, and its column stays as it was
    assert first.record["_group"] == third.record["_group"] == "ana@example.com"
    assert first.record["Email Address"] == "ana@example.com"
    assert "_group" not in anonymous.record  # no id: the response stands alone
    assert first.record["Any comments?"] == "Juicy burger, crisp fries."
    # an answer off the scale is a rejected row with its line, column and the allowed answers
    assert bad.record is None and bad.source == str(tmp_path / "form.csv") and bad.line == 6
    assert MEAL in (bad.error or "") and "Kind of okay" in (bad.error or "")
    assert "'Very dissatisfied'" in (bad.error or "") and "'Very satisfied'" in (bad.error or "")


def test_every_record_carries_provenance(tmp_path: Path) -> None:
    rows = google(tmp_path)
    path = tmp_path / "form.csv"
    mtime = datetime.fromtimestamp(os.stat(path).st_mtime, UTC).isoformat(timespec="seconds")
    assert rows[1].record is not None
    assert rows[1].record["_provenance"] == {
        "kind": "survey", "origin": f"{path}:3", "collected_at": mtime, "collector": COLLECTOR,
    }


def test_explicit_separator_and_answer_map(tmp_path: Path) -> None:
    path = write(tmp_path / "plain.csv", "id,mood,tags\n1,meh,a; b ;c\n2,GREAT,\n3,bad,x\n")
    rows = read(path, likert={"mood": {"bad": 0, "meh": 0.5, "great": 1}}, multi_select=["tags"])
    assert [r.record["mood"] for r in rows if r.record] == [0.5, 1, 0]
    assert [r.record["tags"] for r in rows if r.record] == [["a", "b", "c"], [], ["x"]]  # plain: ";" by default
    rows = read(path, likert={"mood": {"bad": 0, "great": 1}}, separator=" ")
    assert rows[0].record is None and "'mood'" in (rows[0].error or "") and "['bad', 'great']" in (rows[0].error or "")


def test_qualtrics_three_header_rows_and_real_line_numbers(tmp_path: Path) -> None:
    path = write(tmp_path / "qualtrics.csv", QUALTRICS)
    rows = read(
        path,
        needed={"text": "What should we improve?", "score": "Q1"},  # by question text and by short id
        likert={"How much do you agree: the food was worth its price?": "agree7", "Q3": "frequency5"},
        multi_select=["Q2"],
    )
    assert [r.line for r in rows] == [5, 6, 8, 9]
    first, second, bad, last = rows
    assert first.record is not None and second.record is not None and last.record is not None
    assert first.record["Q1"] == first.record["How much do you agree: the food was worth its price?"] == 7
    assert first.record["Q2"] == ["Friday", "Saturday"]  # Qualtrics joins choices with ","
    assert first.record["Which days do you visit?\n(select all that apply)"] == ["Friday", "Saturday"]
    assert first.record["Q3"] == 4 and second.record["Q1"] == 5 and last.record["Q1"] == 4
    assert second.record["Q4"] == "Faster service,\nmore vegetarian dishes"
    assert last.record["Q2"] == []
    # ResponseId is the respondent when none is named
    assert [r.record["_group"] for r in (first, second, last)] == ["R_1aBcD", "R_2eFgH", "R_4mNoP"]
    assert first.record["_provenance"]["origin"] == f"{path}:5"
    assert bad.record is None and bad.line == 8  # the file's own line, past the multi-line cells
    assert "Q1" in (bad.error or "") and "'Totally agree'" in (bad.error or "") and "'Somewhat agree'" in (bad.error or "")


def test_qualtrics_format_is_checked_and_fields_are_checked_up_front(tmp_path: Path) -> None:
    forms = write(tmp_path / "form.csv", GOOGLE_FORMS)
    with pytest.raises(DataError, match=r"form\.csv: not a Qualtrics export.*ImportId"):
        read(forms, format="qualtrics")
    path = write(tmp_path / "qualtrics.csv", QUALTRICS)
    with pytest.raises(DataError, match=r"qualtrics\.csv: column\(s\) not found for text -> 'Comments'"):
        read(path, needed={"text": "Comments"})


def test_excel_export(tmp_path: Path) -> None:
    import openpyxl

    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append(["Timestamp", "Respondent", "The staff were friendly", "Dishes tried", "Any comments?"])
    ws.append([datetime(2024, 5, 3, 12, 4, 11), "u1", "Agree", "Soup, Bread", "Lovely soup."])
    ws.append([None, None, None, None, None])  # a blank row: skipped, and later rows keep Excel's numbers
    ws.append([datetime(2024, 5, 3, 12, 9, 52), "u2", 2, "Burger", None])
    ws.append([datetime(2024, 5, 3, 12, 15, 30), "u3", "Mostly", None, "Hmm."])
    path = tmp_path / "form.xlsx"
    wb.save(path)

    rows = read(path, likert={"The staff were friendly": "agree5"}, multi_select=["Dishes tried"], respondent="Respondent")
    assert [r.line for r in rows] == [2, 4, 5]
    first, second, bad = rows
    assert first.record is not None and second.record is not None
    assert first.record["Timestamp"] == "2024-05-03T12:04:11"  # Excel dates as ISO text
    assert first.record["The staff were friendly"] == 4 and second.record["The staff were friendly"] == 2
    assert first.record["Dishes tried"] == ["Soup", "Bread"] and second.record["Dishes tried"] == ["Burger"]
    assert second.record["_group"] == "u2"
    assert first.record["_provenance"]["origin"] == f"{path}[Sheet]:2"
    assert bad.record is None and bad.source == f"{path}[Sheet]" and bad.line == 5 and "'Mostly'" in (bad.error or "")


def test_explode_makes_one_record_per_free_text_answer(tmp_path: Path) -> None:
    path = write(tmp_path / "plain.csv",
                 "who,liked,disliked,score\np1,The soup,The noise,4\np2,,Slow service,2\np3,,,3\np1,Dessert,,5\n")
    rows = read(path, needed={"text": "text", "label": "question"}, respondent="who", explode=["liked", "disliked"],
                likert={"score": "agree5"})
    records = [(r.line, r.record) for r in rows]
    assert [(line, rec["text"], rec["question"]) for line, rec in records if rec] == [
        (2, "The soup", "liked"), (2, "The noise", "disliked"), (3, "Slow service", "disliked"), (5, "Dessert", "liked"),
    ]
    first = records[0][1]
    assert first is not None
    assert {k: v for k, v in first.items() if k != "_provenance"} == {
        "who": "p1", "score": 4, "_group": "p1", "text": "The soup", "question": "liked",
    }  # the other (non-exploded) columns ride along; the exploded ones do not
    assert [rec["_group"] for _, rec in records if rec] == ["p1", "p1", "p2", "p1"]


def test_exploded_answers_each_become_an_example(tmp_path: Path, make_config) -> None:
    """The answers of one response shared its line, so the id made of it: every answer after the first was quarantined
    as a duplicate id (6 of 12 kept)."""
    from tests.data.test_prepare import sentences
    from tunesmith.artifacts import DatasetVersion
    from tunesmith.data.prepare import prepare

    texts = sentences(24)
    rows = "".join(f"p{i},{texts[2 * i]},{texts[2 * i + 1]}\n" for i in range(12))
    path = write(tmp_path / "survey.csv", "who,liked,disliked\n" + rows)
    cfg = make_config([{"path": str(path), "survey": {"respondent": "who", "explode": ["liked", "disliked"]}}],
                      task={"type": "single_label_classification", "label": "question"})
    version = DatasetVersion(prepare(cfg).path)
    ids = [i for split in ("train", "validation", "test") for i in version.table(split).column("id").to_pylist()]
    assert len(ids) == 24 and "survey.csv:2/disliked" in ids


def test_explode_in_qualtrics_by_question_text(tmp_path: Path) -> None:
    path = write(tmp_path / "qualtrics.csv", QUALTRICS)
    rows = read(path, explode=["What should we improve?"], likert={"Q1": {"strongly agree": 1, "somewhat agree": 0.5,
                                                                          "totally agree": 1, "neither agree nor disagree": 0}})
    assert [(r.line, r.record["text"]) for r in rows if r.record] == [
        (5, "Nothing"), (6, "Faster service,\nmore vegetarian dishes"), (9, "Louder music"),
    ]
    assert all(r.record and "Q4" not in r.record and "What should we improve?" not in r.record for r in rows)
    assert rows[0].record and rows[0].record["question"] == "What should we improve?"


@pytest.mark.parametrize("option, expected", [
    ({"respondent": "Email"}, r"respondent column 'Email' not found"),
    ({"likert": {"Rating": "agree5"}}, r"likert column 'Rating' not found"),
    ({"multi_select": ["Choices"]}, r"multi_select column 'Choices' not found"),
    ({"explode": ["Comments"]}, r"explode column 'Comments' not found"),
])
def test_missing_configured_column_names_file_and_columns(tmp_path: Path, option: dict[str, Any], expected: str) -> None:
    path = write(tmp_path / "form.csv", GOOGLE_FORMS)
    with pytest.raises(DataError, match=expected) as err:
        read(path, **option)
    assert str(path) in str(err.value) and "'Email Address'" in str(err.value) and "'Any comments?'" in str(err.value)


def test_a_column_read_that_the_export_names_twice_is_refused(tmp_path: Path) -> None:
    """Google Forms heads two questions alike: the records kept the second 'Comments' only, and dropped the rows where
    it was empty (the same file read as plain CSV was refused)."""
    text = ("Timestamp,Rating,Comments,Comments,Notes,Notes\n"
            "5/3/2024 12:04:11,good,Lovely soup,Parking was hard,a,b\n5/3/2024 12:09:52,bad,Cold pizza,,c,d\n")
    path = write(tmp_path / "form.csv", text)
    with pytest.raises(DataError, match=r"form\.csv: the header has column\(s\) \['Comments'\] more than once"):
        read(path, needed={"text": "Comments", "label": "Rating"})
    path = write(tmp_path / "form.xlsx", "")
    import openpyxl

    wb = openpyxl.Workbook()
    for row in text.splitlines():
        wb.active.append(row.split(","))
    wb.save(path)
    with pytest.raises(DataError, match=r"more than once"):
        read(path, needed={"text": "Comments", "label": "Rating"})
    assert [r.record["Notes"] for r in read(path, needed={"text": "Rating"}) if r.record] == ["b", "d"]  # not read: kept


def test_qualtrics_missing_column_lists_ids_with_question_texts(tmp_path: Path) -> None:
    path = write(tmp_path / "qualtrics.csv", QUALTRICS)
    with pytest.raises(DataError, match=r"respondent column 'Email' not found.*'Q3 \(How often do you eat out\?\)'"):
        read(path, respondent="Email")


def test_qualtrics_headers_without_responses(tmp_path: Path) -> None:
    path = write(tmp_path / "qualtrics.csv", "\n".join(QUALTRICS.splitlines()[:4]) + "\n")
    with pytest.raises(DataError, match=r"three header rows but no responses"):
        read(path)


def test_the_example_export_reads_cleanly() -> None:
    rows = read(EXAMPLE, needed={"text": "text"}, respondent="Email Address", likert={MEAL: "satisfied5"},
                multi_select=[ORDER], explode=["Any comments?"])
    assert rows and all(r.record is not None for r in rows), [r.error for r in rows if r.error]
    groups = [r.record["_group"] for r in rows if r.record]
    assert len(groups) > len(set(groups))  # some people answered twice: grouped splits keep them together
    assert all(isinstance(r.record[MEAL], int) and r.record[ORDER] for r in rows if r.record)


def test_qualtrics_question_text_shared_by_several_columns_must_be_named_by_id(tmp_path: Path) -> None:
    path = write(tmp_path / "matrix.csv", 'ResponseId,Q5_1,Q5_2\nResponse ID,Rate it,Rate it\n'
                 '"{""ImportId"":""_recordId""}","{""ImportId"":""QID5_1""}","{""ImportId"":""QID5_2""}"\nR_1,Agree,Disagree\n')
    with pytest.raises(DataError, match=r"'Rate it' heads several columns \['Q5_1', 'Q5_2'\]; name the likert column by its id"):
        read(path, likert={"Rate it": "agree5"})
    rows = read(path, likert={"Q5_1": "agree5", "Q5_2": "agree5"})
    assert rows[0].record is not None and (rows[0].record["Q5_1"], rows[0].record["Q5_2"]) == (4, 2)
    assert rows[0].line == 4 and rows[0].record["_group"] == "R_1"


@pytest.mark.parametrize("mark", ["Zeitstempel", "Marca temporal", "Horodateur", "Carimbo de data/hora", "タイムスタンプ", "时间戳"])
def test_a_google_forms_export_in_another_language_is_recognised(tmp_path: Path, mark: str) -> None:
    """auto knew Google Forms only by an English "Timestamp": a German export read as plain, "Ramen, Gyoza" unsplit."""
    path = write(tmp_path / "form.csv", f'{mark},Was haben Sie bestellt?\n2024/01/01 10:00:00,"Ramen, Gyoza"\n')
    rows = read(path, multi_select=["Was haben Sie bestellt?"])
    assert rows[0].record is not None and rows[0].record["Was haben Sie bestellt?"] == ["Ramen", "Gyoza"]


def test_comma_joined_answers_read_as_plain_are_warned_of(tmp_path: Path) -> None:
    """An export auto cannot tell from plain: answers joined by ", " are not split, and the warning names the column
    and the format to set (once per column)."""
    path = write(tmp_path / "form.csv", 'Wann,Bestellung\n1,"Ramen, Gyoza"\n2,"Tee, Reis"\n')
    said: list[str] = []
    rows = list(survey.read(spec(path, multi_select=["Bestellung"]), {}, warn=said.append))
    assert rows[0].record is not None and rows[0].record["Bestellung"] == ["Ramen, Gyoza"]
    assert len(said) == 1 and "'Bestellung'" in said[0] and "format: google_forms" in said[0]
    # plain answers joined as plain says, or a format set on purpose: nothing to warn of
    write(path, 'Wann,Bestellung\n1,"Ramen; Gyoza, scharf"\n')
    list(survey.read(spec(path, multi_select=["Bestellung"]), {}, warn=said.append))
    list(survey.read(spec(path, multi_select=["Bestellung"], format="plain"), {}, warn=said.append))
    assert len(said) == 1
