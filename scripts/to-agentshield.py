#!/usr/bin/env python3
"""Rewrites Agent-SPM JSON lines (stdin) in AgentShield's real shape (stdout): a
`session_created {sessionId, userId, agentId}` when an agent's session starts (one session per
agent and UTC day), then its tool entries with `sessionId` and `userId` only (`tool_allowed`
for ALLOW, `policy_denied` otherwise; `safe_payload` kept), one person running several agents.
For measuring attribution on fleets written as Agent-SPM, e.g. the labelled fleet:

    zstd -dc ../shared/eval/fleet-dev.jsonl.zst | scripts/to-agentshield.py > shield.jsonl

    scripts/to-agentshield.py [AGENTS_PER_USER (default 5)]
"""
import json
import sys
from datetime import datetime


def main() -> None:
    per_user = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    users: dict = {}
    sessions: set = set()
    out = sys.stdout
    for line in sys.stdin:
        if not line.strip():
            continue
        ev = json.loads(line)
        agent = ev["agent_id"]
        user = users.setdefault(agent, "user-%03d" % (len(users) // per_user))
        ts = int(datetime.fromisoformat(ev["timestamp"].replace("Z", "+00:00")).timestamp() * 1000)
        session = "sess-%s-%d" % (agent, ts // 86_400_000)
        if session not in sessions:
            sessions.add(session)
            out.write(json.dumps({"type": "session_created", "timestamp": ts,
                                  "eventId": "sc-" + session, "sessionId": session,
                                  "userId": user, "agentId": agent}) + "\n")
        entry = {"type": "tool_allowed" if ev.get("outcome") == "ALLOW" else "policy_denied",
                 "timestamp": ts, "eventId": ev.get("event_id", ""), "sessionId": session,
                 "userId": user, "toolName": ev.get("tool_name", "")}
        if "safe_payload" in ev:
            entry["safe_payload"] = ev["safe_payload"]
        out.write(json.dumps(entry) + "\n")


if __name__ == "__main__":
    main()
