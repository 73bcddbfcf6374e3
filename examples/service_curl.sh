#!/bin/sh
# Ask Tether's decision API from the shell: open a session, then ask about a call the policy
# does not grant. Needs a running API and an agent credential:
#
#   TETHER_POLICY=policy.yaml python -m uvicorn --factory tether.core.service.api:factory &
#   export TETHER_CREDENTIAL="$(tether agents credentials create bot)"
#   TETHER_URL=http://127.0.0.1:8000/v1 sh examples/service_curl.sh
set -eu
url="${TETHER_URL:-http://127.0.0.1:8000/v1}"
auth="Authorization: Bearer ${TETHER_CREDENTIAL:?set TETHER_CREDENTIAL to an agent credential}"

ask() {  # ask METHOD PATH [JSON]: print the answer, fail on an HTTP error
    curl --silent --show-error --fail-with-body -X "$1" "$url$2" \
        -H "$auth" -H "Content-Type: application/json" ${3:+--data "$3"}
}

session=$(ask POST /sessions '{"user": "u-42"}' | sed -n 's/.*"session_id":"\([0-9a-f]*\)".*/\1/p')
echo "session: $session"
decision=$(ask POST "/sessions/$session/tool-calls" '{"tool": "delete_file", "args": {"path": "/srv/data"}, "call_id": "c1"}')
echo "decision: $decision"
case "$decision" in
    *'"allowed":true'*) echo "allowed: run the tool" ;;
    *) echo "not allowed: tell the agent, do not run the tool" ;;
esac
