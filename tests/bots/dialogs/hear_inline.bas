' answers: 1
FUNCTION ask()
  HEAR x
  RETURN x
END FUNCTION
TALK "asking"
TALK ask()
