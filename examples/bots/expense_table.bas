' The expenses table, INCLUDEd by the form that fills it and the report that reads it.
TABLE expenses
  id integer key auto
  email * string(120)
  spent_on * date
  amount * number
  note string(200)
END TABLE
