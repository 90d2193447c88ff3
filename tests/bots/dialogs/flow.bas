' answers: 3 | x | 2 | 1 | 2
FUNCTION fact(n)
  IF n <= 1 THEN
    RETURN 1
  END IF
  RETURN n * fact(n - 1)
END FUNCTION
FUNCTION ask(question)
  TALK question
  HEAR reply AS INTEGER
  RETURN reply * 10
END FUNCTION
TALK fact(20), fact(25)
total = 0
i = 0
DO WHILE i < 10
  i = i + 1
  IF i = 3 THEN
    i = i + 1
  ELSEIF i > 8 THEN
    EXIT DO
  END IF
  total = total + i
LOOP
TALK total, i
DO
  i = i - 2
LOOP UNTIL i < 0
TALK i
n = ask("how many?")
TALK "got ${n}"
FOR EACH item IN ["a", "b", "c"]
  SELECT CASE item
    CASE "a"
      TALK "first"
    CASE "b", "c"
      TALK "later " & item
    CASE ELSE
      TALK "never"
  END SELECT
NEXT
FOR j = 1 TO 5
  IF j = 4 THEN
    EXIT FOR
  END IF
  TALK "j=${j}"
NEXT
TALK j
CALL tell("done")
HEAR k AS INTEGER
FOR j = 1 TO k
  TALK "again ${j}"
  HEAR z
NEXT
FUNCTION tell(what)
  TALK "tell: " + what
END FUNCTION
