#!/usr/bin/env python3
"""payments: event sourcing. Every deposit and payment is an event appended to this service's
own database; balances are derived from the events (a projection kept in memory, rebuilt by
replaying the log at start). `payments.py --db FILE --replay` prints the balances a replay
of the log gives, which is what a running service must answer.

  POST /api/payments/deposits   {"account": "alice", "amount": 500}     -> 201 the event
  POST /api/payments            {"account": "alice", "amount": 120}     -> 201, or 409 when the
                                                                           balance is too low,
                                                                           422 for an unknown user
  GET  /api/payments/balances/ACCOUNT                                   -> {"balance": N}
  GET  /api/payments/events                                             -> the log
With --users URL, an account must exist at URL/api/users/ACCOUNT (the users service: a call
that the pod's sidecar intercepts). The call carries on the request's W3C trace context
(traceparent, tracestate), as an application in a mesh does, so one trace spans the hops."""
import json
import sys
import time
import urllib.error
import urllib.request

import shopkit

SCHEMA = """CREATE TABLE IF NOT EXISTS events (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  account TEXT NOT NULL,
  kind TEXT NOT NULL CHECK (kind IN ('deposit', 'payment')),
  amount INTEGER NOT NULL CHECK (amount > 0),
  at REAL NOT NULL);"""


def apply(balances, event):
    """The one place the state follows from an event."""
    account, kind, amount = event["account"], event["kind"], event["amount"]
    balances[account] = balances.get(account, 0) + (amount if kind == "deposit" else -amount)


def replay(db):
    balances = {}
    for seq, account, kind, amount, at in db.execute("SELECT seq, account, kind, amount, at FROM events ORDER BY seq"):
        apply(balances, {"account": account, "kind": kind, "amount": amount})
    return balances


def main():
    args = shopkit.arguments(__doc__, [(("--replay",), {"action": "store_true"}),
                                       (("--users",), {"default": "", "help": "the users service's URL"})])
    svc = shopkit.Service("payments", args.db, SCHEMA)
    if args.replay:
        json.dump(replay(svc.db), sys.stdout, sort_keys=True)
        print()
        return
    balances = replay(svc.db)  # the projection, rebuilt from the log

    def user_exists(account, headers):
        if not args.users:
            return True
        context = {k: headers[k] for k in ("traceparent", "tracestate") if headers.get(k)}
        call = urllib.request.Request("%s/api/users/%s" % (args.users, account), headers=context)
        try:
            with urllib.request.urlopen(call, timeout=5) as r:
                return r.status == 200
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return False
            raise

    def append(account, kind, amount):
        at = time.time()
        cur = svc.db.execute("INSERT INTO events (account, kind, amount, at) VALUES (?, ?, ?, ?)",
                             (account, kind, amount, at))
        event = {"seq": cur.lastrowid, "account": account, "kind": kind, "amount": amount, "at": at}
        apply(balances, event)
        return event

    def valid(body):
        account, amount = body.get("account"), body.get("amount")
        return isinstance(account, str) and account and isinstance(amount, int) and amount > 0

    @svc.route("POST", r"/api/payments/deposits")
    def deposit(m, body, headers):
        if not valid(body):
            return 400, {"error": "need account (string) and amount (positive integer)"}
        with svc.lock:
            return 201, append(body["account"], "deposit", body["amount"])

    @svc.route("POST", r"/api/payments")
    def pay(m, body, headers):
        if not valid(body):
            return 400, {"error": "need account (string) and amount (positive integer)"}
        if not user_exists(body["account"], headers):
            return 422, {"error": "unknown user " + body["account"]}
        with svc.lock:
            if balances.get(body["account"], 0) < body["amount"]:
                return 409, {"error": "insufficient balance", "balance": balances.get(body["account"], 0)}
            event = append(body["account"], "payment", body["amount"])
        event["by"] = headers.get("x-user", "")
        return 201, event

    @svc.route("GET", r"/api/payments/balances/([^/]+)")
    def balance(m, body, headers):
        return 200, {"account": m.group(1), "balance": balances.get(m.group(1), 0)}

    @svc.route("GET", r"/api/payments/events")
    def events(m, body, headers):
        rows = svc.db.execute("SELECT seq, account, kind, amount, at FROM events ORDER BY seq").fetchall()
        return 200, {"events": [dict(zip(("seq", "account", "kind", "amount", "at"), r)) for r in rows]}

    svc.serve(args.port)


if __name__ == "__main__":
    main()
