#!/usr/bin/env bash
# Stand up the lab's signed audit service over OUT/index (TLS, the shipped default policy),
# register a regulator and a third-party auditor, let each ask who it is and one attribution
# question, run the demo audit campaign (campaigns/demo/) as each of them, stop the server,
# then verify the lab's ledger and re-verify both reports offline with the lab's public key.
# Usage: scripts/demo_serve.sh OUT_DIR   (after scripts/demo.sh has built OUT_DIR/index)
# DEMO_PORT (default 50551, the port the shipped campaign files name) moves the server.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: scripts/demo_serve.sh OUT_DIR}
LAB=$OUT/lab
S=.venv/bin/auditor-server
A=.venv/bin/auditor
PY=.venv/bin/python
mkdir -p "$LAB"
# Each demo auditor keeps the lab's signed tree heads it has seen next to its key (like SSH's
# known_hosts), so every later run is checked against every earlier one.
heads_of() { echo "$OUT/auditors/$1/heads"; }

[ -f "$LAB/lab-key/lab.key" ] || $S keys --out "$LAB/lab-key" >/dev/null
[ -f "$LAB/certs/ca.pem" ] || $S tls-demo-certs --out "$LAB/certs" >/dev/null
LAB_KEY=$(cat "$LAB/lab-key/lab.pub")
{
  echo "# Demo registry written by scripts/demo_serve.sh"
  echo "auditors:"
  for who in regulator third_party; do
    dir=$OUT/auditors/$who
    [ -f "$dir/auditor.key" ] || $A keygen --out "$dir" --id "demo-$who" >/dev/null
    echo "  - {id: demo-$who, role: $who, keys: [{key: \"$(cat "$dir/auditor.pub")\"}]}"
  done
} > "$LAB/auditors.yaml"
# The shipped policy, with the demo registry, and a withheld budget that survives re-running
# the demo the same day against the same lab state (each run's privacy probes spend ~8).
sed -e 's|^auditor_registry: .*|auditor_registry: auditors.yaml|' \
    -e 's|withheld_budget: [0-9]*|withheld_budget: 200|' policy/default.yaml > "$LAB/policy.yaml"
if [ -f "$LAB/state/ledger.db" ] && [ ! -f "$LAB/state/ledger.heads" ]; then
  # A lab state from before head journals: adopt its log as it stands (the command warns).
  $S ledger init-journal --db "$LAB/state/ledger.db" --lab-key "$LAB_KEY"
fi

$S serve --index "$OUT/index" --policy "$LAB/policy.yaml" --lab-key "$LAB/lab-key" \
  --state "$LAB/state" --host 127.0.0.1 --port "${DEMO_PORT:-50551}" \
  --tls-cert "$LAB/certs/server.pem" --tls-key "$LAB/certs/server.key" \
  > "$LAB/server.out" 2> "$LAB/server.log" &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
port=""
for _ in $(seq 1 600); do
  port=$($PY -c 'import json,sys
for line in open(sys.argv[1]):
    if line.startswith("{") and json.loads(line).get("event") == "listening":
        print(json.loads(line)["port"]); break' "$LAB/server.out" 2>/dev/null || true)
  [ -n "$port" ] && break
  kill -0 $pid 2>/dev/null || { cat "$LAB/server.log" >&2; exit 1; }
  sleep 0.2
done
[ -n "$port" ] || { echo "server did not start" >&2; cat "$LAB/server.log" >&2; exit 1; }
echo "lab service on localhost:$port (TLS), lab key $LAB_KEY"

first=$(head -n 1 "$OUT/corpus.questions.jsonl")
prompt=$($PY -c 'import json,sys; print(json.loads(sys.argv[1])["prompt"])' "$first")
completion=$($PY -c 'import json,sys; print(json.loads(sys.argv[1])["completion"])' "$first")
for who in regulator third_party; do
  conn=(--server "localhost:$port" --key "$OUT/auditors/$who" --lab-key "$LAB_KEY"
        --tls-ca "$LAB/certs/ca.pem")
  echo "-- as demo-$who"
  AUDITOR_HEAD_STORE=$(heads_of "$who") $A whoami "${conn[@]}"
  AUDITOR_HEAD_STORE=$(heads_of "$who") $A attribute "${conn[@]}" --prompt "$prompt" \
    --completion "$completion" --top-k 5
done

for who in regulator third_party; do
  echo "-- campaign as demo-$who"
  rm -rf "$OUT/reports/$who"
  AUDITOR_HEAD_STORE=$(heads_of "$who") $A campaign run "campaigns/demo/$who.yaml" --out "$OUT/reports/$who" \
    --server "localhost:$port" --lab-key "$LAB_KEY" --key "$OUT/auditors/$who" \
    --tls-ca "$LAB/certs/ca.pem"
done

for who in regulator third_party; do
  echo "-- demo-$who checks the lab's log against every head it has seen"
  AUDITOR_HEAD_STORE=$(heads_of "$who") $A head check --server "localhost:$port" \
    --key "$OUT/auditors/$who" --lab-key "$LAB_KEY" --tls-ca "$LAB/certs/ca.pem"
  AUDITOR_HEAD_STORE=$(heads_of "$who") $A head export --lab-key "$LAB_KEY" \
    --out "$OUT/auditors/$who-heads.json"
done
echo "-- the auditors compare views: each imports the other's heads (a split view exits 4)"
AUDITOR_HEAD_STORE=$(heads_of regulator) $A head import "$OUT/auditors/third_party-heads.json" \
  --lab-key "$LAB_KEY"
AUDITOR_HEAD_STORE=$(heads_of third_party) $A head import "$OUT/auditors/regulator-heads.json" \
  --lab-key "$LAB_KEY"

kill -TERM $pid
wait $pid || true
trap - EXIT
echo "-- offline checks (the server is stopped)"
$S ledger verify --db "$LAB/state/ledger.db" --lab-key "$LAB_KEY" \
  --heads "$OUT/auditors/regulator-heads.json" --heads "$OUT/auditors/third_party-heads.json"
for who in regulator third_party; do
  $A verify "$OUT/reports/$who/report.json" --lab-key "$LAB_KEY"
done
echo "reports: $OUT/reports/regulator/index.html  $OUT/reports/third_party/index.html"
