"""A real Flight SQL client for Sluice's tests and benchmarks: Python ADBC.

    adbc_client.py query   --uri URI [--token T] [--tls-ca F] --sql SQL [--sql SQL ...] --out FILE.arrow
    adbc_client.py objects --uri URI [--token T] [--tls-ca F]
    adbc_client.py error   --uri URI [--token T] [--tls-ca F] [--cert F --key F] --sql SQL
    adbc_client.py latency --uri URI [--token T] --sql SQL [--runs 200]
    adbc_client.py throughput --uri URI [--token T] --sql SQL

`--sql` may be repeated: the statements run in order on one connection (one
session), and the last one's result is the command's.

Every command prints one JSON object on stdout. `error` exits 0 only when
the statement failed (and prints the error), 1 when it returned data.
"""

import argparse
import json
import sys
import time


def connect(args):
    import adbc_driver_flightsql.dbapi as flightsql
    from adbc_driver_flightsql import DatabaseOptions

    kwargs = {}
    if args.token is not None:
        kwargs[DatabaseOptions.AUTHORIZATION_HEADER.value] = f"Bearer {args.token}"
    if args.tls_ca:
        with open(args.tls_ca) as f:
            kwargs[DatabaseOptions.TLS_ROOT_CERTS.value] = f.read()
    if args.cert:
        with open(args.cert) as f:
            kwargs[DatabaseOptions.MTLS_CERT_CHAIN.value] = f.read()
        with open(args.key) as f:
            kwargs[DatabaseOptions.MTLS_PRIVATE_KEY.value] = f.read()
    return flightsql.connect(args.uri, db_kwargs=kwargs, autocommit=True)


def run(conn, sql):
    """Runs each statement of `sql` (a list) on `conn`; the last one's rows."""
    statements = sql if isinstance(sql, list) else [sql]
    with conn.cursor() as cur:
        for statement in statements[:-1]:
            # DDL and SET go through Flight SQL's update path (DoPut).
            cur.adbc_statement.set_sql_query(statement)
            cur.adbc_statement.execute_update()
        cur.execute(statements[-1])
        return cur.fetch_arrow_table()


def cmd_query(args):
    import pyarrow as pa

    with connect(args) as conn:
        table = run(conn, args.sql)
    with pa.OSFile(args.out, "wb") as sink:
        with pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
    print(json.dumps({"rows": table.num_rows, "columns": table.column_names}))


def cmd_objects(args):
    with connect(args) as conn:
        objects = conn.adbc_get_objects(depth="tables").read_all().to_pylist()
    tables = []
    for catalog in objects:
        for schema in catalog.get("catalog_db_schemas") or []:
            for t in schema.get("db_schema_tables") or []:
                tables.append(
                    {
                        "catalog": catalog.get("catalog_name"),
                        "schema": schema.get("db_schema_name"),
                        "table": t.get("table_name"),
                    }
                )
    print(json.dumps({"tables": tables}))


def cmd_error(args):
    try:
        with connect(args) as conn:
            table = run(conn, args.sql)
    except Exception as e:  # the driver's error classes vary by version
        status = getattr(e, "status_code", None)
        print(
            json.dumps(
                {
                    "error": str(e),
                    "kind": type(e).__name__,
                    "status": getattr(status, "name", str(status)),
                }
            )
        )
        return 0
    print(json.dumps({"rows": table.num_rows}))
    return 1


def percentile(sorted_ms, p):
    i = min(len(sorted_ms) - 1, max(0, round(p / 100 * (len(sorted_ms) - 1))))
    return sorted_ms[i]


def cmd_latency(args):
    with connect(args) as conn:
        run(conn, args.sql)  # warm the connection and the session
        times = []
        for _ in range(args.runs):
            start = time.perf_counter()
            run(conn, args.sql)
            times.append((time.perf_counter() - start) * 1000)
    times.sort()
    print(
        json.dumps(
            {
                "runs": args.runs,
                "p50_ms": percentile(times, 50),
                "p99_ms": percentile(times, 99),
                "max_ms": times[-1],
            }
        )
    )


def cmd_throughput(args):
    with connect(args) as conn:
        start = time.perf_counter()
        table = run(conn, args.sql)
        seconds = time.perf_counter() - start
    size = table.nbytes
    print(
        json.dumps(
            {
                "rows": table.num_rows,
                "bytes": size,
                "seconds": seconds,
                "mb_per_s": size / 1e6 / seconds,
            }
        )
    )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["query", "objects", "error", "latency", "throughput"])
    parser.add_argument("--uri", required=True)
    parser.add_argument("--token")
    parser.add_argument("--tls-ca")
    parser.add_argument("--cert", help="client certificate (PEM) for mTLS")
    parser.add_argument("--key", help="client private key (PEM) for mTLS")
    parser.add_argument("--sql", action="append")
    parser.add_argument("--out")
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    handler = {
        "query": cmd_query,
        "objects": cmd_objects,
        "error": cmd_error,
        "latency": cmd_latency,
        "throughput": cmd_throughput,
    }[args.command]
    sys.exit(handler(args) or 0)


if __name__ == "__main__":
    main()
