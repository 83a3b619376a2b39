"""The member portal (issue 16): Sign-In with Ethereum for members, their browser sessions
(PostgreSQL, so they survive a restart), and the page at ``/portal`` (docs/portal.md)."""
