"""
Who is asking: users, passwords, tokens, roles, login blocking, PAM.

- ``users``: the users file, password hashing, roles, ``User``, the state directory;
- ``checker``: the users file as a ``twisted.cred`` checker, and its watch (a timer service);
- ``pam``: system accounts (PAM and Unix groups) as a checker;
- ``tokens``: ``TokenStore``;
- ``login``: the realm and the ``Authenticator`` every transport logs in through;
- ``blocking``: ``LoginGuard``, failed-login blocking.
"""
