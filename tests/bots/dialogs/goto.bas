' answers: a
TALK "first"
x = [1, 2, 3]
FOR EACH n IN x
  IF n = 2 THEN
    GO TO "ending"
  END IF
  TALK n
NEXT
