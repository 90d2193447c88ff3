' answers: 12 | 30
TABLE notes
  body string(100) *
  amount number
END TABLE
HEAR a AS NUMBER
SAVE "notes", "first", a
HEAR b AS NUMBER
SAVE "notes", "second", b
rows = FIND "notes", "amount>=10"
total = 0
FOR EACH row IN rows
  total = total + row.amount
  TALK row.body
NEXT
TALK "total ${total}"
