' answers:
TALK "checking"
ALLOW ROLE "admin"
TALK "not reached"
