#!/bin/sh
# Provision one host of the appliance's topology: a thin wrapper around
# appliance/provision.py, the code path the namespace lab uses too.
#
#   deploy/provision.sh net ROLE --if PART=IFNAME|MAC ... [--netns NS] [--upstream-only]
#   deploy/provision.sh install        (appliance VM: package, user, rules, service)
#   deploy/provision.sh services       (internet VM: the lab's HTTP and DNS services)
#
# The checkout is $APPLIANCE_SOURCE, else this script's parent directory, else /vagrant
# (Vagrant uploads shell provisioners to /tmp before running them).
set -eu
src=${APPLIANCE_SOURCE:-$(cd "$(dirname "$0")/.." 2>/dev/null && pwd)}
[ -f "$src/appliance/provision.py" ] || src=/vagrant
[ -f "$src/appliance/provision.py" ] || { echo "provision.sh: no checkout found (set APPLIANCE_SOURCE)" >&2; exit 2; }
python=${PYTHON:-python3}
if ! command -v "$python" >/dev/null 2>&1 || ! command -v ip >/dev/null 2>&1; then
    # A fresh Debian box: the provisioning code needs python3 (stdlib only) and iproute2.
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends python3 iproute2 procps
fi
case "${1:-}" in
    install|services) set -- "$@" --source "$src" ;;
esac
PYTHONPATH="$src${PYTHONPATH:+:$PYTHONPATH}" exec "$python" -m appliance.provision "$@"
