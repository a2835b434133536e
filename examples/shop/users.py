#!/usr/bin/env python3
"""users: the shop's customers, in this service's own database.
  GET /api/users/ID  -> 200 the user, or 404
  GET /api/users     -> every user"""
import shopkit

SCHEMA = """CREATE TABLE IF NOT EXISTS users (id TEXT PRIMARY KEY, name TEXT NOT NULL);
INSERT OR IGNORE INTO users VALUES ('alice', 'Alice'), ('bob', 'Bob'), ('carol', 'Carol');"""


def main():
    args = shopkit.arguments(__doc__)
    svc = shopkit.Service("users", args.db, SCHEMA)

    @svc.route("GET", r"/api/users/([^/]+)")
    def one(m, body, headers):
        row = svc.db.execute("SELECT id, name FROM users WHERE id = ?", (m.group(1),)).fetchone()
        return (200, {"id": row[0], "name": row[1]}) if row else (404, {"error": "no user " + m.group(1)})

    @svc.route("GET", r"/api/users")
    def every(m, body, headers):
        return 200, {"users": [{"id": i, "name": n} for i, n in svc.db.execute("SELECT id, name FROM users")]}

    svc.serve(args.port)


if __name__ == "__main__":
    main()
