"""A real SMTP server for the email tests: aiosmtpd with STARTTLS, AUTH, and scripted failures.

Every accepted message is appended to OUT as one JSON line: from, to, subject, text, html, auth.
  smtp_server.py --port P --out OUT [--cert C --key K] [--user U --password W]
                 [--transient N] [--reject ADDR]
--transient N answers the first N DATA commands with 451 (a transient error); --reject ADDR
answers RCPT TO:<ADDR> with 550 (a permanent error). Prints READY when listening.
"""
import argparse
import email
import email.policy
import json
import ssl
import sys
import time

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


class Handler:
    def __init__(self, out, transient, reject):
        self.out = out
        self.transient = transient
        self.reject = reject

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.reject and address == self.reject:
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.transient > 0:
            self.transient -= 1
            return "451 4.3.0 try again later"
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        text = msg.get_body(preferencelist=("plain",))
        html = msg.get_body(preferencelist=("html",))
        rec = {
            "from": str(msg["From"]),
            "to": sorted(envelope.rcpt_tos),
            "subject": str(msg["Subject"]),
            "text": text.get_content() if text else None,
            "html": html.get_content() if html else None,
            "auth": session.authenticated,
            "tls": session.ssl is not None,
        }
        with open(self.out, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")
        return "250 OK"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--user")
    p.add_argument("--password")
    p.add_argument("--transient", type=int, default=0)
    p.add_argument("--reject")
    a = p.parse_args()
    kw = {}
    if a.cert:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(a.cert, a.key)
        kw.update(tls_context=ctx, require_starttls=True)
    if a.user:
        def auth(server, session, envelope, mechanism, auth_data):
            ok = (isinstance(auth_data, LoginPassword)
                  and auth_data.login.decode() == a.user
                  and auth_data.password.decode() == a.password)
            return AuthResult(success=ok)
        kw.update(authenticator=auth, auth_required=True, auth_require_tls=bool(a.cert))
    c = Controller(Handler(a.out, a.transient, a.reject), hostname="127.0.0.1", port=a.port, **kw)
    c.start()
    print("READY", flush=True)
    try:
        while True:
            time.sleep(3600)
    finally:
        c.stop()


if __name__ == "__main__":
    sys.exit(main())
