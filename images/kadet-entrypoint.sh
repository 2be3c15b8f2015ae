#!/bin/sh
# Entry point of the kadet component image: files a task writes stay group-writable (umask 002),
# so a work dir shared with the caller's group (kadet run --runner docker: uid 10001, the caller's
# group) stays theirs to use and prune. On a cluster KFP sets the container's command, which
# replaces this entry point; there fsGroup gives the volume's group.
umask 002
exec "$@"
