#!/usr/bin/env python3
"""recommendations: products for a user, from this service's own database.
  GET /api/recommendations/USER -> {"user": USER, "items": [...], "version": N}

--version 2 is the next release (the shop's canary): it also suggests what goes with the first item."""
import shopkit

SCHEMA = """CREATE TABLE IF NOT EXISTS items (user TEXT NOT NULL, item TEXT NOT NULL, rank INTEGER NOT NULL);
INSERT INTO items SELECT 'alice', 'teapot', 1 WHERE NOT EXISTS (SELECT 1 FROM items);
INSERT INTO items SELECT 'alice', 'cups', 2 WHERE (SELECT COUNT(*) FROM items) = 1;"""


def main():
    args = shopkit.arguments(__doc__, [(("--version",), {"type": int, "default": 1})])
    svc = shopkit.Service("recommendations", args.db, SCHEMA)

    @svc.route("GET", r"/api/recommendations/([^/]+)")
    def for_user(m, body, headers):
        rows = svc.db.execute("SELECT item FROM items WHERE user = ? ORDER BY rank", (m.group(1),)).fetchall()
        items = [r[0] for r in rows] or ["gift card"]
        if args.version >= 2:
            items = items + ["saucers"]
        return 200, {"user": m.group(1), "items": items, "version": args.version}

    svc.serve(args.port)


if __name__ == "__main__":
    main()
