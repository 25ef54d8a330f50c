import duckdb

from resources.warehouse import quote_ident, scalar, sha256_file, table_count, table_exists


def test_helpers_on_a_real_connection(tmp_path):
    conn = duckdb.connect(str(tmp_path / "w.duckdb"))
    assert not table_exists(conn, 'odd "name"')
    assert table_count(conn, 'odd "name"') == 0
    odd = quote_ident('odd "name"')
    conn.execute(f"create table {odd} as select range as x from range(7)")
    assert table_exists(conn, 'odd "name"')
    assert table_count(conn, 'odd "name"') == 7
    assert scalar(conn, "select max(x) from range(5) t(x) where x < $n", {"n": 3}) == 2
    assert scalar(conn, "select 1 where false") is None
    conn.execute("select 1")  # the helpers leave no open result behind


def test_sha256_file(tmp_path):
    p = tmp_path / "f.txt"
    p.write_bytes(b"abc")
    assert sha256_file(p) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
