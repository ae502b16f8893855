import codecs
import datetime
import io
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openpyxl
import pytest

from app.pipeline.readers import ReadError, csv_reader, detect_format, open_table, xlsx
from app.pipeline.readers.json_reader import MAX_DEPTH, _DepthGuard

Rows = list[tuple[dict[str, Any], str | None]]


@pytest.fixture(autouse=True)
def clean_database() -> None:
    """The readers touch no database: the suite's table truncation is not needed."""


def write(tmp_path: Path, name: str, content: bytes | str) -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def read(path: Path, fmt: str = "auto", **options: Any) -> tuple[list[str], Rows]:
    with open_table(path, fmt, **options) as table:
        rows = list(table.rows())
        return table.columns, rows


def data_of(rows: Rows) -> list[dict[str, Any]]:
    return [data for data, _ in rows]


# CSV


def test_csv_reads_header_and_rows_as_strings(tmp_path: Path) -> None:
    columns, rows = read(write(tmp_path, "users.csv", "name,age\nAnn,31\nBob,42\n"))

    assert columns == ["name", "age"]
    assert rows == [({"name": "Ann", "age": "31"}, None), ({"name": "Bob", "age": "42"}, None)]


def test_csv_with_utf8_bom_strips_it_from_the_first_header(tmp_path: Path) -> None:
    columns, rows = read(write(tmp_path, "bom.csv", codecs.BOM_UTF8 + b"email,name\na@x.io,A\n"))

    assert columns == ["email", "name"]
    assert data_of(rows) == [{"email": "a@x.io", "name": "A"}]


def test_csv_with_crlf_line_endings_reads_like_lf(tmp_path: Path) -> None:
    crlf = read(write(tmp_path, "crlf.csv", "a,b\r\n1,2\r\n3,4\r\n"))
    lf = read(write(tmp_path, "lf.csv", "a,b\n1,2\n3,4\n"))

    assert crlf == lf == (["a", "b"], [({"a": "1", "b": "2"}, None), ({"a": "3", "b": "4"}, None)])


def test_csv_quoted_field_keeps_newlines_quotes_and_delimiters(tmp_path: Path) -> None:
    text = 'id,note\r\n1,"line one\r\nline two, with ""quotes"""\r\n2,plain\r\n'

    _, rows = read(write(tmp_path, "quoted.csv", text))

    assert data_of(rows) == [
        {"id": "1", "note": 'line one\r\nline two, with "quotes"'},
        {"id": "2", "note": "plain"},
    ]


def test_csv_empty_file_raises_file_is_empty(tmp_path: Path) -> None:
    with pytest.raises(ReadError, match=r"^The file is empty\.$"):
        read(write(tmp_path, "empty.csv", b""))


def test_csv_with_only_blank_lines_raises_file_is_empty(tmp_path: Path) -> None:
    with pytest.raises(ReadError, match=r"^The file is empty\.$"):
        read(write(tmp_path, "blank.csv", "\r\n\n  \n"), "csv")


def test_csv_header_only_has_columns_and_no_rows(tmp_path: Path) -> None:
    assert read(write(tmp_path, "header.csv", "a,b,c\n")) == (["a", "b", "c"], [])


def test_csv_blank_lines_are_skipped(tmp_path: Path) -> None:
    _, rows = read(write(tmp_path, "gaps.csv", "\na,b\n\n1,2\n\r\n   \n3,4\n\n"))

    assert rows == [({"a": "1", "b": "2"}, None), ({"a": "3", "b": "4"}, None)]


def test_csv_long_row_is_an_error_with_extra_cells_under_extra_keys(tmp_path: Path) -> None:
    _, rows = read(write(tmp_path, "long.csv", "a,b\n1,2,3,4\n5,6\n"))

    assert rows == [
        ({"a": "1", "b": "2", "_extra_1": "3", "_extra_2": "4"}, "Row has 4 columns, expected 2."),
        ({"a": "5", "b": "6"}, None),
    ]


def test_csv_short_row_is_an_error_with_the_cells_it_has(tmp_path: Path) -> None:
    _, rows = read(write(tmp_path, "short.csv", "a,b,c\n1,2\n"))

    assert rows == [({"a": "1", "b": "2"}, "Row has 2 columns, expected 3.")]


def test_csv_in_cp1252_is_decoded(tmp_path: Path) -> None:
    path = write(tmp_path, "legacy.csv", "name;price\nCafé;5 €\n".encode("cp1252"))

    assert read(path) == (["name", "price"], [({"name": "Café", "price": "5 €"}, None)])


@pytest.mark.parametrize(
    ("bom", "codec"),
    [(codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be")],
    ids=["le", "be"],
)
def test_csv_in_utf16_with_bom_is_decoded(tmp_path: Path, bom: bytes, codec: str) -> None:
    path = write(tmp_path, "wide.csv", bom + "name\tcity\r\nZoë\tKöln\r\n".encode(codec))

    assert read(path) == (["name", "city"], [({"name": "Zoë", "city": "Köln"}, None)])


@pytest.mark.parametrize("delimiter", [",", ";", "\t", "|"], ids=["comma", "semi", "tab", "pipe"])
def test_csv_delimiter_is_sniffed_from_the_header(tmp_path: Path, delimiter: str) -> None:
    lines = [delimiter.join(["a", "b", "c"]), delimiter.join(["1", "x,y;z|w", "3"])]
    text = "\n".join(lines).replace("x,y;z|w", '"x,y;z|w"') + "\n"

    _, rows = read(write(tmp_path, "sniff.txt", text))

    assert data_of(rows) == [{"a": "1", "b": "x,y;z|w", "c": "3"}]


def test_csv_delimiters_inside_quoted_headers_are_not_counted(tmp_path: Path) -> None:
    columns, _ = read(write(tmp_path, "q.csv", '"a;b;c;d",e,f\n1,2,3\n'))

    assert columns == ["a;b;c;d", "e", "f"]


def test_csv_field_over_the_size_limit_raises_a_clear_error(tmp_path: Path) -> None:
    path = write(tmp_path, "big.csv", "a,b\n1,2\n3," + "x" * 50 + "\n")

    with pytest.raises(ReadError, match=r"^Line 3 has a field longer than 20 characters"):
        read(path, max_field_bytes=20)


def test_csv_line_over_the_line_limit_raises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(csv_reader, "MAX_LINE_CHARS", 100)
    path = write(tmp_path, "oneline.csv", "a,b\n" + "1," * 100 + "\n")

    with pytest.raises(ReadError, match=r"^A line is longer than 100 characters\.$"):
        read(path)


def test_csv_row_with_more_than_16384_columns_raises(tmp_path: Path) -> None:
    path = write(tmp_path, "wide.csv", "a,b\n" + "x," * 16_384 + "x\n")

    with pytest.raises(ReadError, match=r"^A row has 16,385 columns, over the 16,384 limit\.$"):
        read(path)


def test_csv_header_names_are_trimmed_and_empty_ones_named_by_position(tmp_path: Path) -> None:
    columns, rows = read(write(tmp_path, "h.csv", " id ,, name ,\n1,2,3,4\n"))

    assert columns == ["id", "column_2", "name", "column_4"]
    assert data_of(rows) == [{"id": "1", "column_2": "2", "name": "3", "column_4": "4"}]


def test_csv_duplicate_headers_get_numbered_suffixes(tmp_path: Path) -> None:
    columns, _ = read(write(tmp_path, "dup.csv", "a,a,b,a,a_2\n"))

    assert columns == ["a", "a_2", "b", "a_3", "a_2_2"]


def test_csv_utf8_character_cut_by_the_sample_boundary_stays_utf8(tmp_path: Path) -> None:
    header = b"note\n"
    # "é" (2 bytes in UTF-8) straddles the 64 KB the encoding is decided on.
    filler = b"x" * (64 * 1024 - len(header) - 1)
    path = write(tmp_path, "edge.csv", header + filler + "é\n".encode())

    _, rows = read(path)

    assert rows[0][0]["note"].endswith("xé")


def test_csv_invalid_utf8_after_the_sample_raises(tmp_path: Path) -> None:
    lines = b"a\n" + b"ascii\n" * 20_000 + "Café\n".encode("cp1252")

    with pytest.raises(ReadError, match=r"^The file is not valid UTF-8 text \(undecodable"):
        read(write(tmp_path, "mixed.csv", lines))


TRICKY_CSV = {
    "plain": b"a,b\n1,2\n3,4\n5,6\n",
    "bom and crlf": codecs.BOM_UTF8 + b"a,b\r\n1,2\r\n3,4\r\n5,6",
    "lone cr": b"a,b\r1,2\r3,4\r\n5,6\r",
    "quoted newlines": b'a,b\n"x\ny",2\n"say ""hi""\r\n, ok",4\n"\r",6\n',
    "blank and ragged": b"a,b\n\n1,2\n , \n3\n\n4,5,6\n,\n7,8\n",
    "cp1252": "a;b\nCaf\u00e9;\u20ac\nna\u00efve;2\n".encode("cp1252"),
    "utf-8": "a|b\n\u00e9t\u00e9|\u65e5\u672c\n\U0001f600|x\n".encode(),
    "unterminated quote": b'a,b\n"x\ny",2\n\n3,4\r5,"six\r\n""seven""\n8,9\n',
}


@pytest.mark.parametrize("name", sorted(TRICKY_CSV))
@pytest.mark.parametrize("size", [1, 2, 3])
@pytest.mark.parametrize("whole", [True, False], ids=["read-whole", "line-by-line"])
def test_csv_byte_range_chunks_read_exactly_the_rows_of_the_whole_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, size: int, whole: bool
) -> None:
    """The splitter cuts a CSV file into byte ranges at row ends; each range, parsed on its
    own, must give the rows a single pass gives, in order, errors included. Ranges are read
    at once up to a size, and a line at a time above it: both ways must agree."""
    if not whole:
        monkeypatch.setattr(csv_reader, "WHOLE_RANGE_BYTES", 0)
    path = write(tmp_path, "data.csv", TRICKY_CSV[name])
    columns, single = read(path, "csv")
    with csv_reader.open_csv(path) as table:
        start = table.position
        assert start is not None
        ends = [end for end, _ in table.row_ends()]
        codec, delimiter = table.codec, table.delimiter
    assert len(ends) == len(single)
    pieced: Rows = []
    for first in range(0, len(ends), size):
        end = ends[min(first + size, len(ends)) - 1]
        part = csv_reader.CsvSlice(codec, delimiter, start, end)
        chunk = list(csv_reader.read_slice(path, columns, part))
        assert len(chunk) == min(size, len(ends) - first)
        pieced.extend(chunk)
        start = end
    assert pieced == single


@pytest.mark.parametrize("name", sorted(TRICKY_CSV))
def test_a_byte_range_read_up_to_a_limit_gives_its_first_rows(tmp_path: Path, name: str) -> None:
    path = write(tmp_path, "data.csv", TRICKY_CSV[name])
    with csv_reader.open_csv(path) as table:
        start = table.position
        assert start is not None
        columns, codec, delimiter = table.columns, table.codec, table.delimiter
    part = csv_reader.CsvSlice(codec, delimiter, start, path.stat().st_size)
    rows = csv_reader.read_slice(path, columns, part)
    for limit in range(1, len(rows) + 2):
        assert csv_reader.read_slice(path, columns, part, limit=limit) == rows[:limit]


def test_csv_in_utf16_is_read_as_text_without_byte_ranges(tmp_path: Path) -> None:
    path = write(tmp_path, "utf16.csv", "a,b\n1,2\n".encode("utf-16"))
    with csv_reader.open_csv(path) as table:
        assert table.position is None
        assert list(table.rows()) == [({"a": "1", "b": "2"}, None)]


def test_csv_not_utf8_nor_cp1252_raises(tmp_path: Path) -> None:
    with pytest.raises(ReadError, match="not valid UTF-8, UTF-16 or Windows-1252 text"):
        read(write(tmp_path, "odd.csv", b"a,b\n\x81\x8d,\x90\n"))


def test_zip_renamed_to_csv_raises(tmp_path: Path) -> None:
    path = tmp_path / "sheet.csv"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("a.txt", "hello")

    with pytest.raises(ReadError, match=r"^The file is a ZIP archive \(perhaps XLSX\), not CSV\.$"):
        read(path)


def test_legacy_xls_renamed_to_xlsx_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "old.xlsx", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(504))

    with pytest.raises(ReadError, match=r"^The file is an OLE2 compound file \(perhaps a legacy"):
        read(path, "xlsx")


def test_gzip_named_ndjson_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "feed.ndjson", b"\x1f\x8b\x08\x00" + bytes(16))

    with pytest.raises(ReadError, match=r"^The file is a gzip archive, not NDJSON\.$"):
        read(path, "ndjson")


def test_binary_junk_named_csv_raises_unsupported(tmp_path: Path) -> None:
    path = write(tmp_path, "junk.csv", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))

    with pytest.raises(ReadError, match=r"^Unsupported file type"):
        read(path)


# XLSX


def make_xlsx(path: Path, sheets: dict[str, list[list[Any]]]) -> Path:
    workbook = openpyxl.Workbook()
    workbook.remove(workbook.active)
    for title, rows in sheets.items():
        sheet = workbook.create_sheet(title)
        for row in rows:
            sheet.append(row)
    workbook.save(path)
    return path


def rewrite_part(path: Path, part: str, change: Callable[[bytes], bytes]) -> Path:
    """Copies the workbook with one part's XML changed (to build hand-made sheets)."""
    target = path.with_name(f"changed-{path.name}")
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(target, "w") as out:
        for entry in source.infolist():
            data = source.read(entry.filename)
            out.writestr(entry, change(data) if entry.filename == part else data)
    return target


def with_sheet_data(sheet_data: bytes) -> Callable[[bytes], bytes]:
    return lambda xml: re.sub(rb"<sheetData\s*/>|<sheetData>.*</sheetData>", sheet_data, xml)


def open_xlsx(path: Path, **limits: Any) -> None:
    with xlsx.open_xlsx(path, **limits):
        pass


SHEET1 = "xl/worksheets/sheet1.xml"


def test_xlsx_reads_the_first_sheet_with_cell_types(tmp_path: Path) -> None:
    when = datetime.datetime(2024, 5, 6, 7, 8)
    path = make_xlsx(
        tmp_path / "book.xlsx",
        {
            "Users": [
                ["Name", "Age", "Score", "Active", "Joined", "Day", "Note"],
                ["Ann", 31, 1.5, True, when, datetime.date(2024, 1, 2), None],
            ],
            "Other": [["x"], [1]],
        },
    )

    columns, rows = read(path)

    assert columns == ["Name", "Age", "Score", "Active", "Joined", "Day", "Note"]
    assert rows == [
        (
            {
                "Name": "Ann",
                "Age": 31,
                "Score": 1.5,
                "Active": True,
                "Joined": when,
                "Day": datetime.date(2024, 1, 2),
                "Note": None,
            },
            None,
        )
    ]
    assert type(rows[0][0]["Age"]) is int


def test_xlsx_reads_a_sheet_by_name(tmp_path: Path) -> None:
    path = make_xlsx(tmp_path / "book.xlsx", {"A": [["a"], [1]], "B": [["b"], [2], [3]]})

    assert read(path, sheet="B") == (["b"], [({"b": 2}, None), ({"b": 3}, None)])


def test_xlsx_unknown_sheet_raises_naming_the_sheets(tmp_path: Path) -> None:
    path = make_xlsx(tmp_path / "book.xlsx", {"Users": [["a"]], "Orders": [["b"]]})

    with pytest.raises(ReadError, match="no sheet named 'Nope'; its sheets are 'Users', 'Orders'"):
        read(path, sheet="Nope")


def test_xlsx_header_is_the_first_non_empty_row_and_blank_rows_are_skipped(
    tmp_path: Path,
) -> None:
    path = make_xlsx(
        tmp_path / "book.xlsx",
        {"S": [[None], [None, None], ["id", "name"], [1, "a"], [None, None], [2, "b"]]},
    )

    assert read(path) == (
        ["id", "name"],
        [({"id": 1, "name": "a"}, None), ({"id": 2, "name": "b"}, None)],
    )


def test_xlsx_header_cells_are_named_like_csv_ones(tmp_path: Path) -> None:
    path = make_xlsx(tmp_path / "book.xlsx", {"S": [[" id ", None, 2024, "id"]]})

    assert read(path)[0] == ["id", "column_2", "2024", "id_2"]


def test_xlsx_value_right_of_the_header_is_a_row_error(tmp_path: Path) -> None:
    path = make_xlsx(tmp_path / "book.xlsx", {"S": [["a", "b"], [1, 2, None, "x"], [3, 4]]})

    _, rows = read(path)

    assert rows == [
        ({"a": 1, "b": 2, "_extra_1": None, "_extra_2": "x"}, "Row has 4 columns, expected 2."),
        ({"a": 3, "b": 4}, None),
    ]


def test_xlsx_empty_sheet_raises(tmp_path: Path) -> None:
    with pytest.raises(ReadError, match=r"^The sheet 'Empty' is empty\.$"):
        read(make_xlsx(tmp_path / "book.xlsx", {"Empty": []}))


def test_xlsx_zip_bomb_entry_is_refused(tmp_path: Path) -> None:
    path = make_xlsx(tmp_path / "book.xlsx", {"S": [["a"], [1]]})
    with (
        zipfile.ZipFile(path, "a", zipfile.ZIP_DEFLATED, compresslevel=9) as archive,
        archive.open("xl/media/zeros.bin", "w") as entry,
    ):
        for _ in range(4):
            entry.write(bytes(1024 * 1024))

    with pytest.raises(ReadError, match=r"zip bomb: xl/media/zeros.bin expands [\d,]+ times"):
        read(path)


def test_xlsx_expanding_past_the_size_limit_is_refused(tmp_path: Path) -> None:
    path = make_xlsx(tmp_path / "book.xlsx", {"S": [["a"], [1]]})

    with pytest.raises(
        ReadError, match=r"^The XLSX file expands to [\d.]+ KB, over the 2 KB limit"
    ):
        open_xlsx(path, max_uncompressed_bytes=2048)


def test_xlsx_with_too_many_entries_is_refused(tmp_path: Path) -> None:
    path = make_xlsx(tmp_path / "book.xlsx", {"S": [["a"], [1]]})

    with pytest.raises(ReadError, match=r"holds \d+ files, over the 3 limit"):
        open_xlsx(path, max_entries=3)


def test_xlsx_with_too_many_cells_is_refused(tmp_path: Path) -> None:
    path = make_xlsx(tmp_path / "book.xlsx", {"S": [["a", "b", "c"], [1, 2, 3], [4, 5, 6]]})

    with pytest.raises(ReadError, match=r"spans 3 rows by 3 columns \(9 cells\), over the 8-cell"):
        open_xlsx(path, max_cells=8)


def test_xlsx_huge_sparse_sheet_is_refused_before_it_is_loaded(tmp_path: Path) -> None:
    # Two cells, but calamine would allocate the 17-billion-cell grid between them and abort.
    workbook = openpyxl.Workbook()
    workbook.active["A1"] = "id"
    workbook.active["XFD1048576"] = 1
    workbook.save(tmp_path / "sparse.xlsx")

    with pytest.raises(ReadError, match=r"1,048,576 rows by 16,384 columns .* 5,000,000-cell"):
        read(tmp_path / "sparse.xlsx")


def test_xlsx_sheet_with_a_lying_dimension_is_judged_by_its_cells(tmp_path: Path) -> None:
    path = make_xlsx(tmp_path / "book.xlsx", {"S": [["a"], [1]]})
    sheet_data = with_sheet_data(
        b'<sheetData><row r="1"><c r="A1" t="inlineStr"><is><t>a</t></is></c></row>'
        b'<row r="900000"><c r="ZZ900000"><v>1</v></c></row></sheetData>'
    )
    path = rewrite_part(
        path,
        SHEET1,
        lambda xml: re.sub(rb"<dimension [^>]*/>", b'<dimension ref="A1:A2"/>', sheet_data(xml)),
    )

    with pytest.raises(ReadError, match=r"spans 900,000 rows by 702 columns"):
        read(path)


def test_xlsx_cells_without_references_still_count_toward_the_grid(tmp_path: Path) -> None:
    path = make_xlsx(tmp_path / "book.xlsx", {"S": [["a"]]})
    unreferenced = b"<c><v>1</v></c>" * 6
    path = rewrite_part(
        path,
        SHEET1,
        with_sheet_data(
            b'<sheetData><row r="1"><c r="A1" t="inlineStr"><is><t>a</t></is></c></row>'
            b'<row r="1000000">' + unreferenced + b"</row></sheetData>"
        ),
    )

    with pytest.raises(ReadError, match=r"spans 1,000,000 rows by 7 columns"):
        read(path)


def test_xlsx_styled_empty_cells_do_not_count_toward_the_grid(tmp_path: Path) -> None:
    path = make_xlsx(tmp_path / "book.xlsx", {"S": [["a"]]})
    path = rewrite_part(
        path,
        SHEET1,
        with_sheet_data(
            b'<sheetData><row r="1"><c r="A1" t="inlineStr"><is><t>a</t></is></c></row>'
            b'<row r="2"><c r="A2"><v>7</v></c></row>'
            b'<row r="1048576" s="1"><c r="XFD1048576" s="1"/></row></sheetData>'
        ),
    )

    assert read(path) == (["a"], [({"a": 7}, None)])


def test_xlsx_with_a_namespace_prefix_is_read(tmp_path: Path) -> None:
    path = make_xlsx(tmp_path / "book.xlsx", {"S": [["a"]]})
    prefixed = (
        b'<x:worksheet xmlns:x="http://schemas.openxmlformats.org/spreadsheetml/2006/main">'
        b'<x:sheetData><x:row r="1"><x:c r="A1" t="inlineStr"><x:is><x:t>a</x:t></x:is></x:c>'
        b'</x:row><x:row r="2"><x:c r="A2"><x:v>5</x:v></x:c></x:row></x:sheetData></x:worksheet>'
    )
    path = rewrite_part(path, SHEET1, lambda _: prefixed)

    assert read(path) == (["a"], [({"a": 5}, None)])


def test_xlsx_with_xml_entities_is_refused(tmp_path: Path) -> None:
    path = make_xlsx(tmp_path / "book.xlsx", {"S": [["a"], [1]]})
    laughs = (
        b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;">]>'
    )
    path = rewrite_part(path, SHEET1, lambda xml: laughs + xml)

    with pytest.raises(ReadError, match="document type declaration, which is not allowed"):
        read(path)


def test_zip_that_is_not_an_xlsx_raises(tmp_path: Path) -> None:
    path = tmp_path / "archive.xlsx"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "hello")

    with pytest.raises(ReadError, match=r"^The file is a ZIP archive but not an XLSX workbook\.$"):
        read(path)


def test_csv_renamed_to_xlsx_raises(tmp_path: Path) -> None:
    with pytest.raises(ReadError, match=r"not an XLSX workbook \(it is not a ZIP archive\)"):
        read(write(tmp_path, "data.xlsx", "a,b\n1,2\n"))


# JSON


def test_json_array_streams_objects_with_columns_in_order_of_first_appearance(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, "a.json", '[{"b": 1, "a": 2.5}, {"c": {"x": [1]}, "a": null}]')

    with open_table(path, "auto") as table:
        assert table.columns == ["b", "a"]  # read ahead from the first object
        rows = list(table.rows())
        assert table.columns == ["b", "a", "c"]
    assert rows == [({"b": 1, "a": 2.5}, None), ({"c": {"x": [1]}, "a": None}, None)]
    assert type(rows[0][0]["a"]) is float


def test_json_array_wrapped_in_an_object_is_streamed(tmp_path: Path) -> None:
    text = '{"meta": {"list": [1]}, "data": [{"a": 1}, {"a": 2}], "total": 2}'

    assert read(write(tmp_path, "w.json", text)) == (["a"], [({"a": 1}, None), ({"a": 2}, None)])


def test_json_empty_array_has_no_columns_and_no_rows(tmp_path: Path) -> None:
    assert read(write(tmp_path, "e.json", " [ ] ")) == ([], [])


@pytest.mark.parametrize("text", ['{"a": 1, "b": {"c": []}}', "42", '"text"'])
def test_json_without_an_array_of_objects_raises(tmp_path: Path, text: str) -> None:
    with pytest.raises(ReadError, match=r"^The JSON file must hold an array of objects\.$"):
        read(write(tmp_path, "o.json", text))


def test_json_item_that_is_not_an_object_is_a_row_error(tmp_path: Path) -> None:
    _, rows = read(write(tmp_path, "m.json", '[{"a": 1}, [1, 2], "x"]'))

    assert rows == [
        ({"a": 1}, None),
        ({"_value": [1, 2]}, "Item is not a JSON object."),
        ({"_value": "x"}, "Item is not a JSON object."),
    ]


def test_json_truncated_midway_raises_after_the_rows_before(tmp_path: Path) -> None:
    path = write(tmp_path, "t.json", '[{"a": 1}, {"a": 2}, {"a": ')

    with open_table(path, "json") as table:
        rows = table.rows()
        assert next(rows) == ({"a": 1}, None)
        assert next(rows) == ({"a": 2}, None)
        with pytest.raises(ReadError, match=r"not valid after item 2: parse error: premature EOF"):
            next(rows)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("NaN", "invalid char in json text"),
        ("Infinity", "invalid char in json text"),
        ("9" * 5000, "an integer is outside the 64-bit range"),
        ("1e400", "a number is too large"),
    ],
    ids=["nan", "infinity", "5000-digits", "float-overflow"],
)
def test_json_with_unrepresentable_numbers_raises(tmp_path: Path, value: str, reason: str) -> None:
    with pytest.raises(ReadError, match=reason):
        read(write(tmp_path, "n.json", f'[{{"a": 1}}, {{"a": {value}}}]'))


def test_json_nested_to_the_limit_is_read(tmp_path: Path) -> None:
    nested = "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1)  # the row object is level 1

    _, rows = read(write(tmp_path, "ok.json", f'[{{"a": {nested}}}]'))

    assert len(rows) == 1


def test_json_nested_past_the_limit_raises(tmp_path: Path) -> None:
    nested = "[" * MAX_DEPTH + "]" * MAX_DEPTH

    with pytest.raises(ReadError, match=r"^The JSON file is nested deeper than 64 levels\.$"):
        read(write(tmp_path, "deep.json", f'[{{"a": 1}}, {{"a": {nested}}}]'))


def test_json_of_a_million_brackets_is_refused_quickly(tmp_path: Path) -> None:
    # ijson's memory grows with the square of the depth: this would exhaust it.
    path = write(tmp_path, "deep.json", b"[" * 1_000_000 + b"]" * 1_000_000)

    with pytest.raises(ReadError, match="nested deeper than 64 levels"):
        read(path)


@pytest.mark.parametrize("size", [1, 2, 3, 5, 64])
def test_depth_guard_ignores_brackets_in_strings_across_read_boundaries(size: int) -> None:
    text = rb'[{"k": "[[[{{\"]]\\", "e": "\\\\", "u": "\u005b\"["}, ["]", "\\"], {"a": {}}]'
    guard = _DepthGuard(io.BytesIO(text * 3), 3)

    while guard.read(size):
        pass

    with pytest.raises(ReadError):
        deeper = _DepthGuard(io.BytesIO(text.replace(b'{"a": {}}', b'{"a": {"b": []}}')), 3)
        while deeper.read(size):
            pass


def test_json_with_a_utf8_bom_is_read(tmp_path: Path) -> None:
    assert read(write(tmp_path, "b.json", codecs.BOM_UTF8 + b'[{"a": 1}]'))[1] == [({"a": 1}, None)]


# NDJSON


def test_ndjson_reads_one_object_per_line_and_skips_blank_lines(tmp_path: Path) -> None:
    text = codecs.BOM_UTF8 + b'{"a": 1}\r\n\n   \n{"b": [1, {"c": 2}], "a": 3}\n'

    columns, rows = read(write(tmp_path, "x.ndjson", text))

    assert columns == ["a", "b"]
    assert rows == [({"a": 1}, None), ({"b": [1, {"c": 2}], "a": 3}, None)]


def test_ndjson_bad_line_is_a_row_error_holding_the_start_of_the_line(tmp_path: Path) -> None:
    bad = '{"a": ' + "x" * 300
    path = write(tmp_path, "x.jsonl", f'{{"a": 1}}\n{bad}\n{{"a": 2}}\n')

    _, rows = read(path)

    assert rows[0] == ({"a": 1}, None)
    assert rows[1][0] == {"_line": bad[:200]}
    assert rows[1][1] is not None and rows[1][1].startswith("Line is not valid JSON: ")
    assert rows[2] == ({"a": 2}, None)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"a": NaN}', "Line is not valid JSON: "),
        ('{"a": ' + "9" * 5000 + "}", "Line holds a number too large to read."),
        ('{"a": -1' + "0" * 400 + "}", "Line holds a number too large to read."),
        ('{"a": 1e400}', "Line holds a number too large to read."),
    ],
    ids=["nan", "5000-digits", "400-digits", "float-overflow"],
)
def test_ndjson_line_with_unrepresentable_numbers_is_a_row_error(
    tmp_path: Path, line: str, message: str
) -> None:
    columns, rows = read(write(tmp_path, "n.ndjson", line + '\n{"a": 1}\n'))

    assert rows[0][1] is not None and rows[0][1].startswith(message)
    assert rows[1] == ({"a": 1}, None)
    assert columns == ["a"]


def test_ndjson_columns_on_opening_come_from_the_first_line_that_is_an_object(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, "n.ndjson", '{"a": \n[1]\n{"b": 1, "c": 2}\n{"a": 3}\n')

    with open_table(path, "ndjson") as table:
        assert table.columns == ["b", "c"]  # what the splitter checks the key columns against
        rows = list(table.rows())
        assert table.columns == ["b", "c", "a"]

    assert [error is None for _, error in rows] == [False, False, True, True]
    assert rows[2:] == [({"b": 1, "c": 2}, None), ({"a": 3}, None)]


def test_ndjson_without_one_object_raises(tmp_path: Path) -> None:
    with pytest.raises(ReadError, match=r"^No line of the NDJSON file is a JSON object; the first"):
        read(write(tmp_path, "n.ndjson", "[1]\n2\n"))


def test_json_columns_on_opening_come_from_the_first_item_that_is_an_object(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, "m.json", '{"data": [1, "x", {"a": 1}, {"b": 2}]}')

    with open_table(path, "json") as table:
        assert table.columns == ["a"]
        rows = list(table.rows())

    assert rows == [
        ({"_value": 1}, "Item is not a JSON object."),
        ({"_value": "x"}, "Item is not a JSON object."),
        ({"a": 1}, None),
        ({"b": 2}, None),
    ]


def test_json_without_one_object_raises(tmp_path: Path) -> None:
    with pytest.raises(ReadError, match=r"^No item of the JSON array is a JSON object\.$"):
        read(write(tmp_path, "m.json", "[1, [2]]"))


def test_ndjson_line_that_is_not_an_object_is_a_row_error(tmp_path: Path) -> None:
    _, rows = read(write(tmp_path, "n.ndjson", '[1, 2]\n{"a": 1}\n'))

    assert rows == [({"_value": [1, 2]}, "Line is not a JSON object."), ({"a": 1}, None)]


def test_ndjson_line_nested_past_the_limit_is_a_row_error(tmp_path: Path) -> None:
    ok = '{"a": ' + "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1) + "}"
    deep = '{"a": ' + "[" * MAX_DEPTH + "]" * MAX_DEPTH + "}"

    _, rows = read(write(tmp_path, "d.ndjson", f"{ok}\n{deep}\n"))

    assert rows[0][1] is None
    assert rows[1] == ({"_line": deep[:200]}, "Line is nested deeper than 64 levels.")


# Format detection


@pytest.mark.parametrize(
    ("filename", "fmt"),
    [
        ("a.csv", "csv"),
        ("a.TSV", "csv"),
        ("a.txt", "csv"),
        ("a.xlsx", "xlsx"),
        ("a.json", "json"),
        ("a.ndjson", "ndjson"),
        ("a.JSONL", "ndjson"),
    ],
)
def test_detect_format_by_extension(tmp_path: Path, filename: str, fmt: str) -> None:
    assert detect_format(write(tmp_path, "upload", "{}"), filename) == fmt


def test_detect_format_uses_the_path_when_no_filename_is_given(tmp_path: Path) -> None:
    assert detect_format(write(tmp_path, "rows.jsonl", "a,b\n")) == "ndjson"


@pytest.mark.parametrize(
    ("content", "fmt"),
    [
        (b'  [{"a": 1}]', "json"),
        (b'{"a": 1}\n{"a": 2}\n', "ndjson"),
        (b'{\n  "data": [{"a": 1}]\n}\n', "json"),
        (b"a,b\n1,2\n", "csv"),
        (codecs.BOM_UTF16_LE + "a,b\n".encode("utf-16-le"), "csv"),
        ("name\nCafé\n".encode("cp1252"), "csv"),
    ],
    ids=["array", "lines", "pretty-object", "text", "utf16", "cp1252"],
)
def test_detect_format_by_sniffing(tmp_path: Path, content: bytes, fmt: str) -> None:
    assert detect_format(write(tmp_path, "upload", content), "upload.bin") == fmt


def test_detect_format_sniffs_an_xlsx(tmp_path: Path) -> None:
    path = make_xlsx(tmp_path / "upload", {"S": [["a"]]})

    assert detect_format(path) == "xlsx"


def test_detect_format_refuses_binary_junk(tmp_path: Path) -> None:
    with pytest.raises(ReadError, match=r"^Unsupported file type: the file holds binary data"):
        detect_format(write(tmp_path, "upload", bytes(range(256)) * 8))


def test_detect_format_refuses_a_zip_that_is_not_an_xlsx(tmp_path: Path) -> None:
    path = tmp_path / "upload"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("a.txt", "hello")

    with pytest.raises(ReadError, match=r"^Unsupported file type: a ZIP archive that is not"):
        detect_format(path)


def test_detect_format_of_an_empty_file_raises(tmp_path: Path) -> None:
    with pytest.raises(ReadError, match=r"^The file is empty\.$"):
        detect_format(write(tmp_path, "upload", b""))


def test_open_table_auto_reads_by_the_detected_format(tmp_path: Path) -> None:
    path = write(tmp_path, "upload", b'{"a": 1}\n')

    assert read(path, filename="data.ndjson") == (["a"], [({"a": 1}, None)])
