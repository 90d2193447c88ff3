' answers:
row = NEW OBJECT
row.name = "only"
FOR EACH r IN row
  TALK "row: " & r.name
NEXT
FOR EACH r IN never_set
  TALK "never"
NEXT
day = TODAY
TALK LEN(day) > 0
step = 0.0
FOR EACH r IN 42
  TALK "never"
NEXT
