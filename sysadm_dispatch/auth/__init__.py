"""Who is asking: users, passwords, tokens, roles, login blocking, PAM."""
