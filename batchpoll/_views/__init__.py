"""What people read: the live bar, the summary and report tables, JUnit."""
