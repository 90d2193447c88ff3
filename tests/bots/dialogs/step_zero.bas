' answers:
s = 0
TALK "loop"
FOR i = 1 TO 3 STEP s
  TALK i
NEXT
