#!/bin/sh
# A build without the `tls` feature (make test-notls): a configuration that asks for TLS stops
# with a clear error instead of connecting in plain text. Usage: tests/notls.sh BINDIR
set -u
bin="$1/tunnel-agent"
passed=0
failed=0
expect() { # name, wanted exit code, wanted text, command...
  name=$1 want=$2 text=$3
  shift 3
  out=$("$@" 2>&1)
  code=$?
  if [ "$code" = "$want" ] && printf '%s' "$out" | grep -q -- "$text"; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    echo "FAIL $name: exit $code (wanted $want), output:"
    printf '%s\n' "$out"
  fi
}
export MEETING_TOKEN=notls-token MEETING_DEVICE_KEY=3316A52EB08837267BF6BD3E2B2E8DC7
expect "run with MEETING_TUNNEL_TLS=1" 2 "built without the tls feature" \
  env MEETING_TUNNEL_TLS=1 "$bin" --host 127.0.0.1 --port 9
expect "run with --tls" 2 "built without the tls feature" "$bin" --tls --host 127.0.0.1 --port 9
expect "check --tls" 1 '"verdict":"config_error"' "$bin" check --json --tls --host 127.0.0.1 --port 9
expect "version" 0 "tunnel-agent" "$bin" --version
echo "notls: $passed passed, $failed failed"
[ "$failed" = 0 ]
